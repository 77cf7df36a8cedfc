"""Exported subnet files, plots, and optuna-dashboard on a search's storage."""

from __future__ import annotations

import io
import json
from wsgiref.util import setup_testing_defaults

import pytest
from optuna.trial import TrialState

from search_util import decode_independently, n_params, synthetic_accuracy, tiny_dims
from unitune.errors import UniTuneError
from unitune.search import (
    dashboard_app,
    export_subnets,
    load_subnets,
    pareto_trials,
    run_search,
    write_outputs,
)
from unitune.supernet import SearchSpace, Subnet

BUDGET = 6000


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """One multi-objective SQLite study shared by the tests of this module (read-only)."""
    folder = tmp_path_factory.mktemp("run")
    result = run_search(synthetic_accuracy, SearchSpace(), tiny_dims(), BUDGET, 12, storage=folder / "study.db",
                        study_name="demo", sampler="random", seed=0, objectives="acc,params", progress=False,
                        study_attrs={"backbone": "vit_tiny_patch16_224", "supernet": "supernet.safetensors"})
    return folder, result


def test_write_outputs_best_subnet_is_a_plain_subnet_file(searched, tmp_path):
    folder, result = searched
    written = write_outputs(result.study, tmp_path)
    best = Subnet.load(written["best_subnet"])  # the foundation's reader, as retrain uses it
    assert written["best_subnet"] == tmp_path / "best_subnet.yaml"
    complete = result.study.get_trials(states=(TrialState.COMPLETE,))
    top = max(complete, key=lambda t: (t.values[0], -t.user_attrs["n_params"], -t.number))
    assert best == decode_independently(top.params, SearchSpace(), 4)
    assert best.backbone == "vit_tiny_patch16_224"
    (subnet, meta), = load_subnets(written["best_subnet"])
    assert subnet == best
    assert meta["trial"] == top.number and meta["val_accuracy"] == pytest.approx(top.values[0])
    assert meta["n_params"] == n_params(best) <= meta["budget"] == BUDGET
    assert meta["study"] == "demo" and meta["supernet"] == "supernet.safetensors"
    for name in ("history", "pareto", "sizes_heatmap"):
        png = written[name]
        assert png.parent == tmp_path / "plots" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size > 5000
    assert not [p for p in tmp_path.rglob("*.tmp")]  # atomic writes leave no temporaries


def test_export_top_k_and_pareto_lists(searched, tmp_path):
    folder, result = searched
    top = export_subnets(folder / "study.db", "demo", out=tmp_path / "top.yaml", top_k=4)
    entries = load_subnets(top)
    assert [m["rank"] for _, m in entries] == [1, 2, 3, 4]
    accuracies = [m["val_accuracy"] for _, m in entries]
    assert accuracies == sorted(accuracies, reverse=True)
    best_of_all = max(t.values[0] for t in result.study.get_trials(states=(TrialState.COMPLETE,)))
    assert accuracies[0] == pytest.approx(best_of_all)
    for subnet, meta in entries:
        assert n_params(subnet) == meta["n_params"] <= BUDGET
        assert synthetic_accuracy(subnet) == pytest.approx(meta["val_accuracy"])

    front = load_subnets(export_subnets(folder / "study.db", None, out=tmp_path / "pareto.yaml", pareto=True))
    optuna_front = {tuple(t.values) for t in result.study.best_trials}
    assert {(m["val_accuracy"], float(m["n_params"])) for _, m in front} == optuna_front
    assert len(front) == len(pareto_trials(result.study))


def test_export_errors(searched, tmp_path):
    folder, _ = searched
    db = folder / "study.db"
    with pytest.raises(UniTuneError, match="either a top-k count or pareto"):
        export_subnets(db, "demo", out=tmp_path / "x.yaml", top_k=2, pareto=True)
    with pytest.raises(UniTuneError, match=r"no study named 'nope' \(studies: \['demo'\]\)"):
        export_subnets(db, "nope", out=tmp_path / "x.yaml")
    with pytest.raises(UniTuneError, match="no such file"):
        export_subnets(tmp_path / "missing.db", "demo", out=tmp_path / "x.yaml")
    assert not (tmp_path / "missing.db").exists() and not (tmp_path / "x.yaml").exists()


def call_wsgi(app, path: str) -> tuple[str, dict]:
    environ: dict = {"PATH_INFO": path, "REQUEST_METHOD": "GET", "QUERY_STRING": ""}
    setup_testing_defaults(environ)
    environ["wsgi.input"] = io.BytesIO(b"")
    status = {}

    def start_response(code, headers, exc_info=None):
        status["code"] = code

    body = b"".join(app(environ, start_response))
    return status["code"], json.loads(body)


def test_dashboard_lists_the_study_and_trial_attributes(searched):
    folder, result = searched
    app = dashboard_app(folder)  # a run folder means its study.db
    code, studies = call_wsgi(app, "/api/studies")
    assert code.startswith("200")
    (summary,) = studies["study_summaries"]
    assert summary["study_name"] == "demo"
    code, detail = call_wsgi(app, f"/api/studies/{summary['study_id']}")
    assert code.startswith("200")
    trials = detail["trials"]
    assert len(trials) == 12
    stored = {t.number: t for t in result.study.trials}
    for trial in trials:
        attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
        truth = stored[trial["number"]].user_attrs
        assert attrs["n_params"] == str(truth["n_params"])
        assert attrs["sizes_lora"] == truth["sizes_lora"]
        assert set(attrs) >= {"n_params_with_head", "params_lora", "params_adapter", "params_vpt", "params_ssf",
                              "val_accuracy", "eval_seconds", "worker"}
    study_attrs = {a["key"]: a["value"] for a in detail["user_attrs"]}
    assert study_attrs["budget"] == str(BUDGET) and json.loads(study_attrs["objectives"]) == ["acc", "params"]


def test_dashboard_on_a_folder_without_storage_is_an_error(tmp_path):
    with pytest.raises(UniTuneError, match="folder holds no study storage"):
        dashboard_app(tmp_path)


def test_one_best_trial_for_dashboard_file_and_export(tmp_path):
    """Six-way ties on val accuracy happen (the demo has them): optuna-dashboard marks the
    storage's ``get_best_trial``, and best_subnet.yaml, export-subnet's first entry and
    ``run_search``'s result must name that same trial, read back through Optuna's API."""
    import optuna

    def coarse(subnet):  # accuracies on a 0.05 grid: many trials tie
        return round(synthetic_accuracy(subnet) * 20) / 20

    result = run_search(coarse, SearchSpace(), tiny_dims(), BUDGET, 20, storage=tmp_path / "study.db",
                        study_name="ties", sampler="random", seed=0, progress=False)
    study = optuna.load_study(study_name="ties", storage=f"sqlite:///{tmp_path / 'study.db'}")
    dashboard_best = study._storage.get_best_trial(study._study_id)  # what optuna-dashboard serves
    top = study.best_value
    tied = [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if t.value == top]
    # The case that used to disagree: a tie where another trial has fewer parameters.
    assert len(tied) > 1 and min(t.user_attrs["n_params"] for t in tied) < dashboard_best.user_attrs["n_params"]

    written = write_outputs(result.study, tmp_path / "out")
    (_, meta), = load_subnets(written["best_subnet"])
    first, *_ = load_subnets(export_subnets(tmp_path / "study.db", "ties", out=tmp_path / "top.yaml", top_k=3))
    assert meta["trial"] == first[1]["trial"] == result.best_trial.number == study.best_trial.number \
        == dashboard_best.number
    from unitune.search import best_ties

    assert sorted(t.number for t in best_ties(study)) == sorted(t.number for t in tied)


from tiny import dashboard_note as _note  # noqa: E402


def test_dashboard_reads_names_sizes_and_the_chosen_subnet(searched, tmp_path):
    """Stock optuna-dashboard shows metric names, each trial's sizes (not indices) and per-method
    counts in its note, and the budget and chosen trial on the study's note."""
    import optuna

    folder, result = searched
    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{folder / 'study.db'}")
    assert study.metric_names == ["val_accuracy", "n_params"]
    pick = study.user_attrs.get("best_trial")  # set if an earlier test of the module wrote the outputs
    for trial in study.get_trials(states=(TrialState.COMPLETE,)):
        subnet = decode_independently(trial.params, SearchSpace(), 4)
        body = _note(study, trial)
        if trial.number == pick:  # the pick says so first, and what decided it
            head, body = body.split("\n\n", 1)
            assert head == ("**The pick.** `best_subnet.yaml` holds this trial: the most accurate point of the "
                            f"accuracy/parameters Pareto front, val accuracy **{trial.values[0]:.4f}**.")
        assert body.startswith(f"### Trial {trial.number}: val accuracy **{trial.values[0]:.4f}**")
        rows = [line.split("|")[1:-1] for line in body.splitlines() if line.startswith("| ")]
        blocks = {r[0].strip(): [c.strip() for c in r[1:]] for r in rows}
        per_block = 0
        for i in range(4):  # sizes, read back against an independent decoder; then the block's count
            sizes = [int(c) for c in blocks[str(i)][:4]]
            assert sizes == [subnet.lora[i], subnet.adapter[i], subnet.vpt[i], subnet.ssf[i]]
            per_block += int(blocks[str(i)][4].replace(",", ""))
        for m in ("lora", "adapter", "vpt", "ssf"):
            assert int(blocks[m][0].replace(",", "")) == trial.user_attrs[f"params_{m}"]
        total = int(blocks["**total** (head excluded)"][0].strip("*").replace(",", ""))
        assert total == trial.user_attrs["n_params"] == per_block + (256 if subnet.ssf_global else 0)

    written = write_outputs(study, tmp_path, dims=tiny_dims())
    (_, meta), = load_subnets(written["best_subnet"])
    assert study.user_attrs["best_trial"] == meta["trial"]
    note = _note(study)
    assert f"**budget**: {BUDGET:,} trainable PEFT parameters" in note
    assert f"### Chosen subnet: trial {meta['trial']}, val accuracy {meta['val_accuracy']:.4f}" in note
    assert _note(study, study.trials[meta["trial"]]).startswith("**The pick.** `best_subnet.yaml` holds this trial")
    assert f"- **the pick**: trial {meta['trial']}. `best_subnet.yaml` holds this trial" in note

    single = run_search(synthetic_accuracy, SearchSpace(), tiny_dims(), BUDGET, 2, storage=tmp_path / "one.db",
                        study_name="one", sampler="random", seed=0, progress=False)
    assert optuna.load_study(study_name="one", storage=f"sqlite:///{tmp_path / 'one.db'}").metric_names \
        == ["val_accuracy"]
    assert single.n_complete == 2


def test_heatmap_shows_every_method_global_ones_and_each_rows_parameters(searched):
    from unitune.search.export import ranked_trials
    from unitune.search.plots import sizes_heatmap_figure

    _, result = searched
    fig = sizes_heatmap_figure(result.study, top=5)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["lora", "adapter", "vpt", "ssf", "global SSF", "parameters"]
    trials = ranked_trials(result.study)[:5]
    assert [t.get_text() for t in fig.axes[-1].texts] == \
        [f"{t.user_attrs['n_params']:,} ({t.user_attrs['n_params'] / BUDGET:.0%})" for t in trials]
    shown = [int(t.get_text()) for t in fig.axes[4].texts]  # the global SSF column, best first
    assert shown == [decode_independently(t.params, SearchSpace(), 4).ssf_global for t in trials]


def test_confusion_png_grows_with_the_class_count(tmp_path):
    import torch
    from PIL import Image

    from unitune.retrain.evaluate import _plot_confusion

    sizes = {}
    for n in (5, 40):
        _plot_confusion(torch.eye(n, dtype=torch.long) * 7, [f"c{i}" for i in range(n)], tmp_path / f"{n}.png", "t")
        sizes[n] = Image.open(tmp_path / f"{n}.png").size
    assert min(sizes[5]) >= 600  # was 375 x 345 with 7-pt numbers
    assert min(sizes[40]) >= 1400  # about 0.3 inch a cell
