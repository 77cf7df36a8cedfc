"""Final selection by stand-alone training (issue 15): the candidates, the pick by validation
accuracy, Kendall's tau stored on the study and plotted, and no look at the test split."""

from __future__ import annotations

import json

import pytest
import yaml
from scipy import stats

from search_util import synthetic_accuracy, tiny_dims
from unitune.engine.config import load_run_config
from unitune.errors import UniTuneError
from unitune.search import run_search
from unitune.search.rerank import check_rerank, rerank, standalone_val_accuracy
from unitune.supernet import SearchSpace, Subnet

BUDGET = 6000


@pytest.fixture(scope="module")
def study():
    return run_search(synthetic_accuracy, SearchSpace(), tiny_dims(), BUDGET, 12, sampler="random", seed=0,
                      study_attrs={"backbone": "vit_tiny_patch16_224"}, progress=False).study


def test_rerank_trains_top_k_and_single_methods_and_picks_by_standalone_val_accuracy(study, tmp_path):
    trained = {}

    def train(run, out, subnet, epochs, progress):  # a stand-in: fewer VPT tokens score higher
        trained[subnet] = epochs
        return 1.0 - 0.01 * sum(subnet.vpt) - 0.001 * sum(subnet.lora)

    record = rerank(None, tmp_path, study, top_k=3, epochs=2, train=train)
    ranked = sorted((t for t in study.trials if t.values), key=lambda t: (-t.values[0], t.user_attrs["n_params"], t.number))
    singles = [t.number for t in study.trials if t.user_attrs.get("source") == "single-method"]
    expected = [t.number for t in ranked[:3]] + [n for n in sorted(singles, key=lambda n: [r.number for r in ranked].index(n))
                                                 if n not in [t.number for t in ranked[:3]]]
    rows = record["candidates"]
    assert [r["trial"] for r in rows] == expected and len(trained) == len(rows) and set(trained.values()) == {2}
    best = max(rows, key=lambda r: r["standalone_val_accuracy"])
    assert record["winner"] == best["trial"]
    x = [r["inherited_val_accuracy"] for r in rows]
    y = [r["standalone_val_accuracy"] for r in rows]
    tau, p = stats.kendalltau(x, y)
    k = record["kendall"]
    assert k["tau"] == pytest.approx(tau) and k["p_value"] == pytest.approx(p) and k["n"] == len(rows)
    assert k["ci95"][0] <= tau <= k["ci95"][1]
    assert study.user_attrs["rerank"] == json.loads(json.dumps(record))
    doc = yaml.safe_load((tmp_path / "best_subnet.yaml").read_text())
    assert doc["meta"]["trial"] == best["trial"]
    assert doc["meta"]["standalone_val_accuracy"] == pytest.approx(best["standalone_val_accuracy"])
    assert doc["meta"]["inherited_val_accuracy"] == pytest.approx(best["inherited_val_accuracy"])
    assert doc["meta"]["kendall_tau"] == pytest.approx(tau)
    assert Subnet.load(tmp_path / "best_subnet.yaml").lora == Subnet.from_dict(doc).lora
    assert (tmp_path / "plots" / "rerank_tau.png").read_bytes()[:4] == b"\x89PNG"


def test_low_tau_warns_with_what_to_do(study, tmp_path, caplog):
    def train(run, out, subnet, epochs, progress):  # the reverse of the supernet's ranking
        return -synthetic_accuracy(subnet)

    record = rerank(None, tmp_path, study, top_k=3, epochs=1, train=train)
    assert record["kendall"]["tau"] == pytest.approx(-1.0)
    assert "train the supernet longer" in caplog.text.lower() and "larger val set" in caplog.text


@pytest.mark.parametrize("value, fragment", [
    ("3", "expected a mapping"), ({"top_k": -1}, "top_k: expected a non-negative integer, got -1"),
    ({"top_k": 2, "epochs": 0}, "epochs: expected a positive integer when top_k is 2"),
    ({"topk": 2}, "topk: unknown key"),
])
def test_bad_rerank_settings_are_one_line_errors(value, fragment):
    with pytest.raises(UniTuneError) as e:
        check_rerank(value)
    assert fragment in str(e.value) and "\n" not in str(e.value)
    assert check_rerank({"top_k": 2, "epochs": 3}) == (2, 3)
    # On by default: missing keys take their defaults; top_k 0 (or null) turns it off.
    assert check_rerank({}) == (5, 5) and check_rerank({"epochs": 2}) == (5, 2)
    assert check_rerank({"top_k": 0}) == (0, 0) and check_rerank(None) == (0, 0)
    from unitune.engine.config import SearchConfig
    assert check_rerank(SearchConfig().rerank) == (5, 5)


def test_a_rerun_reuses_the_standalone_figures_it_has(tmp_path):
    """A resumed run does not train a re-rank candidate again (same epochs): only new ones."""
    study = run_search(synthetic_accuracy, SearchSpace(), tiny_dims(), BUDGET, 10, sampler="random", seed=2,
                       study_attrs={"backbone": "vit_tiny_patch16_224"}, progress=False).study
    calls = []

    def train(run, out, subnet, epochs, progress):
        calls.append((subnet, epochs))
        return 0.5 + 0.001 * sum(subnet.lora) - 0.001 * sum(subnet.vpt)

    first = rerank(None, tmp_path, study, top_k=3, epochs=2, train=train)
    n = len(calls)
    assert n == len(first["candidates"])
    again = rerank(None, tmp_path, study, top_k=3, epochs=2, train=train)
    assert len(calls) == n and again == first  # nothing trained again, same record
    rerank(None, tmp_path, study, top_k=3, epochs=3, train=train)  # other epochs: trained anew
    assert len(calls) == 2 * n and {e for _, e in calls[n:]} == {3}


def test_a_rerun_with_another_recipe_trains_the_candidates_anew(tmp_path):
    """The stored stand-alone scores were keyed by trial and rerank.epochs only: after retrain.lr
    (or the seed, or the data) changed, a rerun re-used the old scores and could keep a stale pick."""
    study = run_search(synthetic_accuracy, SearchSpace(), tiny_dims(), BUDGET, 10, sampler="random", seed=2,
                       study_attrs={"backbone": "vit_tiny_patch16_224"}, progress=False).study
    cfg = {"name": "tiny", "device": "cpu", "model": {"backbone": "vit_tiny_patch16_224"},
           "data": {"source": "synthetic", "num_classes": 3}, "retrain": {"epochs": 5, "lr": 0.005, "seed": 0}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    calls = []

    def train(lr_good):  # a stand-in whose scores depend on the recipe: another lr, another pick
        def fit(run, out, subnet, epochs, progress):
            calls.append(run.retrain.lr)
            sign = 1 if run.retrain.lr == lr_good else -1
            return 0.5 + sign * 0.001 * (sum(subnet.lora) - sum(subnet.vpt))
        return fit

    first = rerank(load_run_config(path), tmp_path, study, top_k=3, epochs=2, train=train(0.005))
    n = len(first["candidates"])
    assert calls == [0.005] * n
    assert rerank(load_run_config(path), tmp_path, study, top_k=3, epochs=2, train=train(0.005)) == first
    assert calls == [0.005] * n  # the same recipe: nothing trained again
    changed = rerank(load_run_config(path, ["retrain.lr=0.01"]), tmp_path, study, top_k=3, epochs=2,
                     train=train(0.005))
    assert calls == [0.005] * n + [0.01] * n  # every candidate trained anew with the new lr
    assert changed["score_key"] != first["score_key"]
    assert [r["standalone_val_accuracy"] for r in changed["candidates"]] == \
        pytest.approx([1 - r["standalone_val_accuracy"] for r in first["candidates"]])
    assert changed["winner"] != first["winner"]  # the stale scores would have kept the old pick
    rerank(load_run_config(path, ["retrain.lr=0.01", "retrain.seed=1"]), tmp_path, study, top_k=3, epochs=2,
           train=train(0.01))
    assert len(calls) == 3 * n  # another seed: anew too
    rerank(load_run_config(path, ["retrain.lr=0.01", "retrain.seed=1", "data.num_classes=4"]), tmp_path, study,
           top_k=3, epochs=2, train=train(0.01))
    assert len(calls) == 4 * n  # other data: anew too


def test_standalone_training_reads_train_and_val_never_test(tmp_path, monkeypatch):
    import unitune.data

    cfg = {
        "name": "tiny", "device": "cpu",
        "model": {"backbone": "vit_tiny_patch16_224",
                  "kwargs": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}},
        "data": {"source": "digits", "classes": [5, 6, 7], "batch_size": 64, "num_workers": 0},
        "space": {"lora": [0, 1, 4], "adapter": [0, 2, 4], "vpt": [0, 2], "ssf": [0, 1], "ssf_global": [0, 1]},
        "retrain": {"epochs": 5, "lr": 0.005},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = load_run_config(path)
    real = unitune.data.build_dataset
    splits = []

    def guarded(data_cfg, split, *args, **kwargs):
        splits.append(split)
        if split not in ("train", "val"):
            raise AssertionError(f"re-rank read the {split!r} split")
        return real(data_cfg, split, *args, **kwargs)

    monkeypatch.setattr(unitune.data, "build_dataset", guarded)
    acc = standalone_val_accuracy(run, tmp_path, Subnet.uniform(2, lora=4), epochs=1)
    assert 0.0 <= acc <= 1.0
    assert sorted(splits) == ["train", "val"]


def test_a_bad_rerank_setting_stops_unitune_run_before_any_work(tmp_path, capsys):
    from unitune.commands.cli import main

    cfg = {"name": "tiny", "device": "cpu",
           "model": {"backbone": "vit_tiny_patch16_224",
                     "kwargs": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}},
           "data": {"source": "digits", "classes": [5, 6, 7], "batch_size": 64, "num_workers": 0},
           "search": {"budget": "1.5k", "trials": 4, "rerank": {"top_k": -2, "epochs": 1}}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", "--config", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"unitune: error: {path}: search.rerank.top_k: expected a non-negative integer, got -2"]
    assert not (tmp_path / "out").exists()


def test_after_rerank_every_reader_names_the_reranked_winner(tmp_path):
    """One rule for "best" (issue 12) holds after a re-rank: best_subnet.yaml, export-subnet's
    first entry, best_trial() and the study's note and attribute all name the re-rank's winner,
    even where it is not Optuna's best by inherited accuracy."""
    from optuna_dashboard._note import get_note_from_system_attrs

    from unitune.search.export import best_trial, export_subnets, load_subnets

    study = run_search(synthetic_accuracy, SearchSpace(), tiny_dims(), BUDGET, 12, sampler="random", seed=1,
                       study_attrs={"backbone": "vit_tiny_patch16_224"}, progress=False).study
    optuna_best = study.best_trial.number

    def train(run, out, subnet, epochs, progress):  # Optuna's best scores worst stand-alone
        return 0.1 if subnet == chosen_subnets[optuna_best] else 0.5 + 0.001 * sum(subnet.lora)

    from unitune.search.export import trial_subnet
    from unitune.search.study import study_encoding

    chosen_subnets = {t.number: trial_subnet(t, study_encoding(study)) for t in study.trials if t.values}
    record = rerank(None, tmp_path, study, top_k=3, epochs=1, train=train)
    winner = record["winner"]
    assert winner != optuna_best
    assert best_trial(study).number == winner
    assert yaml.safe_load((tmp_path / "best_subnet.yaml").read_text())["meta"]["trial"] == winner
    top = export_subnets(study, out=tmp_path / "top.yaml", top_k=3)
    assert load_subnets(top)[0][1]["trial"] == winner
    assert study.user_attrs["best_trial"] == winner
    note = get_note_from_system_attrs(study._storage.get_study_system_attrs(study._study_id), None)["body"]
    assert f"### Chosen subnet: trial {winner}," in note and "re-rank's winner" in note


def test_search_stage_result_names_the_reranked_winner(tmp_path, monkeypatch):
    """`unitune search` prints, and `unitune run` summarises, the search stage's result: after a
    re-rank its best trial is the re-rank's winner (best_subnet.yaml's), not the inherited best."""
    from types import SimpleNamespace

    import unitune.search.stage as stage
    from search_util import tiny_vit
    from unitune.search.export import trial_subnet
    from unitune.search.study import study_encoding

    def fake_run_search(fitness, space, dims, budget, **kwargs):
        return run_search(synthetic_accuracy, SearchSpace(), tiny_dims(), BUDGET, 12, sampler="random", seed=1,
                          study_attrs={"backbone": "vit_tiny_patch16_224"}, progress=False)

    def fake_rerank(run, out, study, top_k, epochs, progress):
        worst = study.best_trial.number  # Optuna's best scores worst stand-alone

        def train(run, out, subnet, epochs, progress):
            loser = trial_subnet(study.trials[worst], study_encoding(study))
            return 0.1 if subnet == loser else 0.5 + 0.001 * sum(subnet.lora)

        return rerank(run, out, study, top_k, epochs, train=train)

    model = SimpleNamespace(vit=tiny_vit(), space=SearchSpace())
    monkeypatch.setattr(stage, "check_search_stage", lambda run, out, **kw: (BUDGET, {"objectives": "acc"}, 0))
    monkeypatch.setattr(stage, "SupernetFitness", lambda run, out, file: SimpleNamespace(
        model=model, meta={"path": "supernet.safetensors"}, num_images=10))
    monkeypatch.setattr(stage, "run_search", fake_run_search)
    monkeypatch.setattr(stage, "rerank", fake_rerank)
    run = SimpleNamespace(search=SimpleNamespace(rerank={"top_k": 3, "epochs": 1}, study=None, fitness="supernet",
                                                 pruner="auto"),
                          model=SimpleNamespace(backbone="vit_tiny_patch16_224"), source="cfg.yaml", name="tiny")
    import unitune.search.plots as plots

    starred = []  # the trial plot_pareto marks "chosen", at each drawing
    real_pareto = plots.plot_pareto
    monkeypatch.setattr(plots, "plot_pareto", lambda study, path: (
        starred.append(plots.ranked_trials(study)[0].number), real_pareto(study, path))[1])
    result, written = stage.search_stage(run, tmp_path, progress=False)
    winner = result.study.user_attrs["rerank"]["winner"]
    assert starred[-1] == winner and written["pareto"].is_file()
    assert winner != result.study.best_trial.number
    assert result.best_trial.number == winner
    assert yaml.safe_load((tmp_path / "best_subnet.yaml").read_text())["meta"]["trial"] == winner
    assert result.best_subnet == trial_subnet(result.best_trial, study_encoding(result.study))


def test_after_rerank_of_a_two_objective_study_every_reader_names_the_winner(tmp_path):
    """With ``acc,params`` the re-rank also writes best_subnet.yaml: best_trial() and
    export-subnet must name that winner too, not the Pareto front's most accurate point."""
    from unitune.search.export import best_trial, export_subnets, load_subnets, trial_subnet
    from unitune.search.study import study_encoding

    study = run_search(synthetic_accuracy, SearchSpace(), tiny_dims(), BUDGET, 12, sampler="random", seed=1,
                       objectives="acc,params", study_attrs={"backbone": "vit_tiny_patch16_224"},
                       progress=False).study
    assert len(study.directions) == 2
    most_accurate = best_trial(study).number
    loser = trial_subnet(study.trials[most_accurate], study_encoding(study))

    def train(run, out, subnet, epochs, progress):  # the most accurate by inheritance scores worst
        return 0.1 if subnet == loser else 0.5 + 0.001 * sum(subnet.lora)

    winner = rerank(None, tmp_path, study, top_k=3, epochs=1, train=train)["winner"]
    assert winner != most_accurate
    assert yaml.safe_load((tmp_path / "best_subnet.yaml").read_text())["meta"]["trial"] == winner
    assert best_trial(study).number == winner
    assert load_subnets(export_subnets(study, out=tmp_path / "top.yaml", top_k=2))[0][1]["trial"] == winner


def test_turning_rerank_off_forgets_an_earlier_winner(tmp_path):
    from unitune.search.export import best_trial
    from unitune.search.rerank import forget_rerank

    study = run_search(synthetic_accuracy, SearchSpace(), tiny_dims(), BUDGET, 10, sampler="random", seed=3,
                       study_attrs={"backbone": "vit_tiny_patch16_224"}, progress=False).study
    optuna_best = study.best_trial.number
    from unitune.search.export import trial_subnet
    from unitune.search.study import study_encoding

    worst = trial_subnet(study.best_trial, study_encoding(study))
    record = rerank(None, tmp_path, study, top_k=3, epochs=1,  # Optuna's best scores worst stand-alone
                    train=lambda run, out, subnet, epochs, progress: 0.1 if subnet == worst else 0.5)
    assert record["winner"] != optuna_best and best_trial(study).number == record["winner"]
    assert forget_rerank(study) is True and forget_rerank(study) is False
    assert best_trial(study).number == optuna_best


def test_rerank_plot_has_every_candidate_in_its_legend_and_rings_the_pick(study, tmp_path, monkeypatch):
    """rerank_tau.png as drawn: one legend entry per candidate (labels beside the points overlapped),
    each at its figures, and the pick ringed and named."""
    import unitune.search.rerank as rr

    figures = []
    real = rr.rerank_figure
    monkeypatch.setattr(rr, "rerank_figure", lambda *a, **k: figures.append(real(*a, **k)) or figures[-1])

    def train(run, out, subnet, epochs, progress):  # Optuna's best scores worst stand-alone
        return 0.5 + 0.01 * sum(subnet.vpt) - 0.001 * sum(subnet.lora)

    record = rerank(None, tmp_path, study, top_k=3, epochs=1, train=train)
    (fig,) = figures
    (ax,) = fig.axes
    rows = record["candidates"]
    assert any(r["single_method"] for r in rows) and any(not r["single_method"] for r in rows)
    labels = [f"#{r['trial']} {r['single_method']}" if r["single_method"] else f"#{r['trial']}" for r in rows]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == \
        labels + [f"pick: #{record['winner']} (the re-rank's winner)"]
    assert not ax.texts  # no annotations beside the points
    *points, ring = ax.collections
    for r, p in zip(rows, points, strict=True):
        assert p.get_offsets().tolist() == [[r["inherited_val_accuracy"], r["standalone_val_accuracy"]]]
    winner = next(r for r in rows if r["trial"] == record["winner"])
    assert winner is not max(rows, key=lambda r: r["inherited_val_accuracy"])  # the ring is not on the first point
    assert ring.get_offsets().tolist() == [[winner["inherited_val_accuracy"], winner["standalone_val_accuracy"]]]
    assert (tmp_path / "plots" / "rerank_tau.png").read_bytes()[:4] == b"\x89PNG"
