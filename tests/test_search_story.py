""""Best" told one way, and the trial table: the pick's note after a re-rank, the study's note,
the plots' pick mark, and trials.csv / trials.md equal to the study's trials."""

from __future__ import annotations

import pandas as pd
import pytest
from optuna.trial import TrialState
from search_util import decode_independently, synthetic_accuracy, tiny_dims

from unitune.commands.cli import main
from unitune.search import run_search, write_outputs
from unitune.search.rerank import rerank
from unitune.search.table import trial_table, write_trial_table
from unitune.supernet import SearchSpace

BUDGET = 6000


from tiny import dashboard_note as _note  # noqa: E402


@pytest.fixture(scope="module")
def reranked(tmp_path_factory):
    """A study whose pick moves from Optuna's best (write_outputs) to the re-rank's winner."""
    folder = tmp_path_factory.mktemp("run")
    study = run_search(synthetic_accuracy, SearchSpace(), tiny_dims(), BUDGET, 10, storage=folder / "study.db",
                       sampler="random", seed=0, study_attrs={"backbone": "vit_tiny_patch16_224"}, progress=False).study
    write_outputs(study, folder, dims=tiny_dims())
    first = study.user_attrs["best_trial"]

    def train(run, out, subnet, epochs, progress):  # the reverse of the search's ranking: another pick
        return 1.0 - synthetic_accuracy(subnet) / 10

    record = rerank(None, folder, study, top_k=3, epochs=2, train=train)
    assert record["winner"] != first
    return folder, study, first, record


def test_the_picks_note_says_it_is_the_pick_and_its_standalone_val(reranked):
    folder, study, first, record = reranked
    winner = study.trials[record["winner"]]
    row = next(r for r in record["candidates"] if r["trial"] == winner.number)
    note = _note(study, winner)
    head, rest = note.split("\n\n", 1)
    assert head == (f"**The pick.** `best_subnet.yaml` holds this trial: the re-rank trained {len(record['candidates'])} "
                    "candidates (the top 3 by val accuracy and the single methods) for 2 epochs on the train split, "
                    f"and this one scored the best stand-alone val accuracy, **{row['standalone_val_accuracy']:.4f}** "
                    f"(its inherited val accuracy: {winner.values[0]:.4f}).")
    assert rest.startswith(f"### Trial {winner.number}: val accuracy **{winner.values[0]:.4f}**")
    assert "| block |" in rest  # the objective's per-block table is kept
    # the earlier pick (Optuna's best, marked by write_outputs) lost the mark and kept its table
    earlier = _note(study, study.trials[first])
    assert earlier.startswith(f"### Trial {first}: val accuracy") and "The pick" not in earlier
    assert sum(_note(study, t).startswith("**The pick.**") for t in study.trials if t.values) == 1


def test_the_study_note_tells_best_one_way(reranked):
    folder, study, first, record = reranked
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    top = max(complete, key=lambda t: (t.values[0], -t.number))
    note = _note(study)
    assert f"- **the search's best val accuracy**: {top.values[0]:.4f}, trial {top.number} (the dashboard's star)" in note
    assert f"- **the pick**: trial {record['winner']}. `best_subnet.yaml` holds this trial: the re-rank trained" in note
    assert "- **why test accuracy differs**:" in note and "train+val" in note


def test_history_and_pareto_mark_the_pick_with_its_deciding_value(reranked):
    from unitune.search.plots import history_figure, pareto_figure

    folder, study, first, record = reranked
    row = next(r for r in record["candidates"] if r["trial"] == record["winner"])
    label = f"pick: trial {record['winner']}, stand-alone val {row['standalone_val_accuracy']:.4f} (re-rank)"
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    top = max(complete, key=lambda t: (t.values[0], -t.number))
    for figure in (history_figure, pareto_figure):
        texts = [t.get_text() for t in figure(study).axes[0].get_legend().get_texts()]
        assert label in texts, (figure.__name__, texts)
    assert f"best so far (best val {top.values[0]:.4f}, trial {top.number})" in \
        [t.get_text() for t in history_figure(study).axes[0].get_legend().get_texts()]


def test_trial_table_equals_the_studys_trials(reranked, tmp_path):
    folder, study, first, record = reranked
    written = write_trial_table(study, tmp_path / "trials.csv")
    frame = pd.read_csv(written["trials_csv"], keep_default_na=False, na_values=[""])
    trials = study.get_trials()
    assert frame["trial"].tolist() == [t.number for t in trials]
    assert frame["state"].tolist() == [t.state.name for t in trials]
    assert frame["pick"].tolist() == [t.number == record["winner"] for t in trials]
    standalone = {r["trial"]: r["standalone_val_accuracy"] for r in record["candidates"]}
    for row, t in zip(frame.to_dict("records"), trials):
        if t.state != TrialState.COMPLETE:
            assert pd.isna(row["val_accuracy"])
            continue
        assert row["val_accuracy"] == pytest.approx(t.values[0], abs=0)
        assert row["n_params"] == t.user_attrs["n_params"] and row["n_params_with_head"] == t.user_attrs["n_params_with_head"]
        for m in ("lora", "adapter", "vpt", "ssf"):
            assert row[f"params_{m}"] == t.user_attrs[f"params_{m}"]
        subnet = decode_independently(t.params, SearchSpace(), 4)
        for m in ("lora", "adapter", "vpt", "ssf"):
            assert str(row[f"sizes_{m}"]) == " ".join(map(str, subnet.sizes(m)))
        assert row["sizes_ssf_global"] == subnet.ssf_global
        if t.number in standalone:
            assert row["standalone_val_accuracy"] == pytest.approx(standalone[t.number], abs=0)
        else:
            assert pd.isna(row["standalone_val_accuracy"])
        assert row["source"] == (t.user_attrs.get("single_method") or t.user_attrs.get("source") or "sampler")
    md = written["trials_md"].read_text().splitlines()
    assert md[0] == f"# {study.study_name}: {len(trials)} trials"
    rows = [ln for ln in md if ln.startswith("| ") and not ln.startswith("| trial")]
    assert len(rows) == len(trials)
    picked = [ln for ln in rows if "**pick**" in ln]
    assert len(picked) == 1 and picked[0].startswith(f"| {record['winner']} | COMPLETE | **pick** |")
    assert trial_table(study).equals(trial_table(study))  # deterministic


def test_export_subnet_writes_the_table_on_request(reranked, tmp_path, capsys):
    folder, study, first, record = reranked
    out = tmp_path / "top.yaml"
    assert main(["export-subnet", "--storage", str(folder), "--top", "3", "--out", str(out),
                 "--table", str(tmp_path / "all.csv")]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == f"export-subnet: trial table {tmp_path / 'all.csv'}, {tmp_path / 'all.md'}"
    assert pd.read_csv(tmp_path / "all.csv")["trial"].tolist() == [t.number for t in study.trials]
    assert (tmp_path / "all.md").read_text().startswith(f"# {study.study_name}:")


def test_export_subnet_table_needs_a_csv_name(reranked, tmp_path, capsys):
    folder, *_ = reranked
    assert main(["export-subnet", "--storage", str(folder), "--out", str(tmp_path / "b.yaml"),
                 "--table", str(tmp_path / "all.md")]) == 2
    err = capsys.readouterr().err
    assert err == (f"unitune: error: --table {tmp_path / 'all.md'}: expected a .csv file name (the markdown goes "
                   "beside it as .md)\n")
    assert not (tmp_path / "b.yaml").exists() and not (tmp_path / "all.md").exists()


def test_search_commands_closing_line_tells_best_one_way(reranked):
    from types import SimpleNamespace

    from unitune.commands.cli import search_line
    from unitune.search import best_trial

    folder, study, first, record = reranked
    pick = best_trial(study)
    row = next(r for r in record["candidates"] if r["trial"] == pick.number)
    top = max(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: (t.values[0], -t.number))
    result = SimpleNamespace(study=study, best_trial=pick, n_complete=10)
    assert search_line(result, {"best_subnet": "B.yaml"}) == (
        f"search: 10 trials, best val accuracy {top.values[0]:.4f} (trial {top.number}); pick trial {pick.number}, "
        f"stand-alone val {row['standalone_val_accuracy']:.4f} (re-rank), {pick.user_attrs['n_params']:,} parameters "
        "-> B.yaml")


def test_the_low_tau_warning_says_what_it_means_for_this_run(reranked, tmp_path, caplog):
    folder, study, first, record = reranked

    def train(run, out, subnet, epochs, progress):  # as the fixture's: the reverse of the search's ranking
        return 1.0 - synthetic_accuracy(subnet) / 10

    again = rerank(None, tmp_path, study, top_k=3, epochs=2, train=train)
    assert again["kendall"]["tau"] == pytest.approx(-1.0)
    row = next(r for r in again["candidates"] if r["trial"] == again["winner"])
    text = " ".join(caplog.text.split())  # the warning is wrapped at 100 columns
    assert (f"For this run: trial {again['winner']} was taken by its stand-alone val accuracy "
            f"{row['standalone_val_accuracy']:.4f}, the best of the {len(again['candidates'])} re-ranked subnets, "
            "not by the search's val.") in text


def test_a_pick_without_a_note_gets_one_from_its_attributes():
    import optuna

    from unitune.supernet.encoding import SubnetEncoding
    from unitune.search.notes import mark_best
    from unitune.supernet import Subnet, count_params

    space, dims = SearchSpace(), tiny_dims()
    enc = SubnetEncoding(space, 4, dims)
    study = optuna.create_study(direction="maximize")
    for key, value in {"budget": BUDGET, "depth": 4, "space": space.to_dict(), "objectives": ["acc"]}.items():
        study.set_user_attr(key, value)
    subnet = Subnet((10, 0, 1, 5), (0,) * 4, (5, 0, 0, 1), (1, 0, 0, 1), ssf_global=1)
    count = count_params(subnet, dims, space)
    study.add_trial(optuna.trial.create_trial(
        params=enc.encode(subnet), distributions=enc.distributions, value=0.5,
        user_attrs={"n_params": count.total, **{f"params_{m}": n for m, n in count.per_method.items()}}))
    trial = study.trials[0]
    mark_best(study, trial, subnet, None)
    note = _note(study, trial)
    assert note.startswith("**The pick.** `best_subnet.yaml` holds this trial: the best val accuracy of the search, "
                           "**0.5000** (Optuna's best_trial, the dashboard's star).\n\n### Trial 0: val accuracy "
                           f"**0.5000**, {count.total:,} parameters")
    assert f"| **total** (head excluded) | **{count.total:,}** | |" in note
