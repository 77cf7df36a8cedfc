"""End to end: `unitune run` on a tiny config, the stored study read back with plain Optuna,
evaluate / predict on the export, a killed run that resumes without redoing the supernet, and
one-line errors of retrain / evaluate / predict."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import yaml
from PIL import Image

from unitune.commands.cli import main
from unitune.engine.config import load_run_config
from unitune.commands.pipeline import run_all
from unitune.retrain import load_model
from unitune.supernet import BackboneDims, SearchSpace, Subnet, count_params
from unitune.search import study_encoding

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}

CONFIG = {
    "name": "tiny",
    "device": "cpu",
    "model": {"backbone": "vit_tiny_patch16_224",
              "kwargs": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}},
    "pretrain": {"data": {"source": "digits", "classes": [0, 1, 2], "batch_size": 64, "num_workers": 0},
                 "epochs": 2, "lr": 0.003},
    "data": {"source": "digits", "classes": [5, 6, 7], "batch_size": 64, "num_workers": 0},
    "space": {"lora": [0, 1, 4], "adapter": [0, 2, 4], "vpt": [0, 2], "ssf": [0, 1], "ssf_global": [0, 1]},
    "supernet": {"epochs": 2, "lr": 0.005},
    "search": {"budget": "1.5k", "trials": 8, "sampler": "tpe"},
    "retrain": {"epochs": 2, "lr": 0.005},
}


def write_config(folder: Path, **changes) -> Path:
    cfg = json.loads(json.dumps(CONFIG))
    for dotted, value in changes.items():
        node = cfg
        *parents, last = dotted.split("__")
        for key in parents:
            node = node[key]
        node[last] = value
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    config = write_config(folder)
    summary = run_all(load_run_config(config), folder / "out", progress=False)
    return config, folder / "out", summary


def test_run_summary(tiny_run):
    config, out, summary = tiny_run
    assert summary["search_trials"] == 8
    assert summary["trainable_params"] <= summary["budget"] == 1500
    assert summary["trainable_params"] == sum(summary["per_method"].values())
    assert 0 <= summary["test_accuracy"] <= 1 and summary["test_images"] > 0
    for name in ("pretrain/backbone.safetensors", "supernet.safetensors", "study.db", "best_subnet.yaml",
                 "plots/history.png", "plots/sizes_heatmap.png", "trials.csv", "trials.md", "export/model.safetensors", "export/unitune.json",
                 "run_summary.json", "eval_test/confusion.csv", "eval_test/confusion.png"):
        assert (out / name).is_file(), name
    assert json.loads((out / "run_summary.json").read_text()) == summary


def test_every_stored_trial_is_within_budget_and_counted_exactly(tiny_run):
    """Read the storage with plain Optuna: n_params <= budget and == the analytic count of the stored sizes."""
    config, out, _ = tiny_run
    run = load_run_config(config)
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'study.db'}")
    space = SearchSpace.from_dict(run.space)
    from unitune.engine.backbone import create_backbone

    dims = BackboneDims.from_model(create_backbone(run.model.backbone, 3, kwargs=run.model.kwargs, meta=True))
    encoding = study_encoding(study, dims)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 8
    for trial in complete:
        subnet = encoding.decode(trial.params)
        analytic = count_params(subnet, dims, space)
        assert trial.user_attrs["n_params"] == analytic.total <= 1500
        assert trial.user_attrs["n_params_with_head"] == analytic.with_head
        assert 0 <= trial.user_attrs["val_accuracy"] <= 1
    best = Subnet.load(out / "best_subnet.yaml")
    meta = yaml.safe_load((out / "best_subnet.yaml").read_text())["meta"]
    trial = study.trials[meta["trial"]]
    assert encoding.decode(trial.params) == best
    assert count_params(best, dims, space).total == trial.user_attrs["n_params"] == meta["n_params"]
    assert trial.user_attrs["val_accuracy"] == max(t.user_attrs["val_accuracy"] for t in complete)


def test_retrained_model_is_exactly_the_subnet(tiny_run):
    config, out, summary = tiny_run
    result = json.loads((out / "retrain_result.json").read_text())
    manifest = json.loads((out / "export" / "unitune.json").read_text())
    best = Subnet.load(out / "best_subnet.yaml")
    assert manifest["subnet"]["subnet"] == best.to_dict()["subnet"]
    assert result["params"]["trainable_params"] == summary["trainable_params"]
    assert manifest["provenance"]["test_accuracy"] == result["test_accuracy"]
    assert manifest["provenance"]["init"] == "pretrained"


def test_evaluate_reproduces_the_recorded_test_accuracy(tiny_run, capsys):
    _, out, summary = tiny_run
    assert main(["evaluate", str(out / "export"), "--json", "--out", str(out / "eval_again")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["accuracy"] == summary["test_accuracy"]
    assert result["recorded_test_accuracy"] == summary["test_accuracy"]
    rows = (out / "eval_again" / "confusion.csv").read_text().splitlines()
    counts = np.array([[int(v) for v in r.split(",")[1:]] for r in rows[1:]])
    assert counts.sum() == summary["test_images"]
    assert np.trace(counts) / counts.sum() == pytest.approx(summary["test_accuracy"])
    assert set(result["per_class_accuracy"]) == {"5", "6", "7"}


def test_predict_and_python_api(tiny_run, tmp_path, capsys):
    from sklearn.datasets import load_digits

    _, out, _ = tiny_run
    digits = load_digits()
    paths = []
    for i, label in enumerate((5, 6, 7)):
        index = int(np.flatnonzero(digits.target == label)[-1])
        img = Image.fromarray((digits.images[index] * 255 / 16).astype(np.uint8)).convert("RGB")
        paths.append(tmp_path / f"digit{i}.png")
        img.save(paths[-1])
    assert main(["predict", str(out / "export"), *map(str, paths), "--top-k", "2", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in results] == [str(p) for p in paths]
    for r in results:
        assert len(r["top"]) == 2 and {t["label"] for t in r["top"]} <= {"5", "6", "7"}
        assert r["top"][0]["prob"] >= r["top"][1]["prob"]
    model = load_model(out / "export")
    assert not model.training and isinstance(model, torch.nn.Module)


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["retrain", "--subnet", "DEEP"], "lists have 3 entries, but the backbone has 2 blocks"),
        (["retrain", "--subnet", "OFFSPACE"], "lora[0] = 3 is not in the search space [0, 1, 4]"),
        (["evaluate", "MISSINGFILE"], "model.safetensors: file missing"),
        (["evaluate", "TAMPERED"], "unitune.json"),
        (["predict", "EXPORT", "BADIMAGE"], "unreadable image"),
        (["predict", "EXPORT", "NOIMAGE"], "image not found"),
    ],
)
def test_bad_input_one_line(tiny_run, tmp_path, capsys, argv, fragment):
    config, out, _ = tiny_run
    deep, offspace = tmp_path / "deep.yaml", tmp_path / "off.yaml"
    Subnet.uniform(3, lora=1).save(deep)
    Subnet.uniform(2, lora=3).save(offspace)
    missing = tmp_path / "missing_export"
    shutil.copytree(out / "export", missing)
    (missing / "model.safetensors").unlink()
    tampered = tmp_path / "tampered_export"
    shutil.copytree(out / "export", tampered)
    manifest = json.loads((tampered / "unitune.json").read_text())
    del manifest["weights"]
    (tampered / "unitune.json").write_text(json.dumps(manifest))
    bad_image = tmp_path / "bad.png"
    bad_image.write_bytes(b"not a png")
    names = {"DEEP": deep, "OFFSPACE": offspace, "MISSINGFILE": missing, "TAMPERED": tampered,
             "EXPORT": out / "export", "BADIMAGE": bad_image, "NOIMAGE": tmp_path / "nope.png"}
    argv = [str(names.get(a, a)) for a in argv]
    if argv[0] == "retrain":
        argv += ["--config", str(config), "--out", str(tmp_path / "retrain_out"), "--quiet"]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("unitune: error: ") and err.count("\n") == 1, err
    assert fragment in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def _complete_trials(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            return conn.execute("SELECT count(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_killed_run_resumes_without_redoing_the_supernet(tmp_path):
    config = write_config(tmp_path, search__trials=40, pretrain__epochs=1, supernet__epochs=1, retrain__epochs=1)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "unitune", "run", "--config", str(config), "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while _complete_trials(out / "study.db") < 3:
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "the search never started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = _complete_trials(out / "study.db")
    assert 3 <= killed_at < 40
    supernet = out / "supernet.safetensors"
    stamp, log = supernet.stat().st_mtime_ns, (out / "supernet_log.jsonl").read_text()
    assert not (out / "export").exists()
    partial = json.loads((out / "run_summary.json").read_text())  # written as each stage ended
    assert partial["complete"] is False and isinstance(partial["seconds"]["supernet"], float)

    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert supernet.stat().st_mtime_ns == stamp and (out / "supernet_log.jsonl").read_text() == log
    summary = json.loads((out / "run_summary.json").read_text())
    # Skipped now, with the duration the killed run recorded (was "skipped (complete)", no time).
    assert "supernet" in summary["skipped"] and summary["seconds"]["supernet"] == partial["seconds"]["supernet"]
    assert summary["complete"] is True
    assert summary["search_trials"] == 40 == _complete_trials(out / "study.db")
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'study.db'}")
    finished = [t.params for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(finished) == 40


def test_summary_names_why_the_best_trial_was_taken():
    """With ties on val accuracy the summary says Optuna's best_trial was taken and names the
    smallest tie; after search.rerank it says the re-rank's winner was taken (the ties on inherited
    accuracy decided nothing)."""
    from unitune.commands.pipeline import format_summary

    s = {"budget": 1000, "trainable_params": 900, "trainable_params_with_head": 950, "per_method": {"lora": 900},
         "search_trials": 5, "search_best_val_accuracy": 0.5, "search_best_trial": 3, "search_best_params": 900,
         "search_ties": [[1, 400], [3, 900]], "test_accuracy": 0.4, "test_images": 10, "seconds": {}}
    line = next(ln for ln in format_summary(s).splitlines() if ln.startswith("pick"))
    assert line.endswith("2 trials tie on val accuracy, Optuna's best_trial is taken (the smallest is trial 1, 400)")
    line = next(ln for ln in format_summary({**s, "search_reranked": True}).splitlines()
                if ln.startswith("pick"))
    assert line == ("pick                   trial 3 (900 parameters), the re-rank's winner (best stand-alone val "
                    "accuracy, search.rerank)")


def test_summary_tells_best_one_way():
    """The search's best val (the dashboard's star), the pick with the stand-alone val that decided
    it, what a low tau means for this run, and why test differs from both."""
    from unitune.commands.pipeline import format_summary

    s = {"budget": 1000, "trainable_params": 900, "trainable_params_with_head": 950, "per_method": {"lora": 900},
         "search_trials": 60, "search_best_val_accuracy": 0.7709, "search_best_val_trial": 39, "search_best_trial": 52,
         "search_best_params": 900, "search_ties": [[52, 900]], "search_reranked": True, "pick_val_accuracy": 0.7654,
         "pick_standalone_val_accuracy": 0.6089, "rerank_epochs": 5, "rerank_candidates": 9, "rerank_tau": 0.24,
         "test_accuracy": 0.92, "test_images": 300, "retrain_epochs": 10, "search_fitness": "supernet", "seconds": {}}
    lines = format_summary(s).splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("search "))
    assert lines[start:start + 9] == [
        "search                 60 trials, best val accuracy 0.7709 (trial 39, the dashboard's star)",
        "pick                   trial 52 (900 parameters), taken by the re-rank: stand-alone val 0.6089,",
        "                       the best of 9 subnets trained 5 epochs on train (its search val 0.7654)",
        "supernet ranking       Kendall tau 0.24: the search's val ranked these subnets close to randomly,",
        "                       so it did not decide the pick: trial 52 was taken by its stand-alone val",
        "test accuracy          0.9200 on 300 images (retrained, last epoch); it differs from val",
        "                       by design: the search's val uses the supernet's shared weights;",
        "                       the re-rank's val follows 5 epochs of training on train;",
        "                       test follows 10 epochs of retraining on train+val, scored once on test",
    ]
    assert max(len(ln) for ln in lines[start:start + 9]) <= 100
    good = format_summary({**s, "rerank_tau": 0.8})
    assert "supernet ranking" not in good and "taken by the re-rank: stand-alone val 0.6089" in good


def test_quiet_retrain_still_prints_its_result(tiny_run, tmp_path, capsys):
    """--quiet drops progress, not results: `unitune retrain --quiet` prints its closing line."""
    config, out, _ = tiny_run
    new = tmp_path / "new"
    assert main(["retrain", "--config", str(config), "--out", str(new), "--subnet", str(out / "best_subnet.yaml"),
                 "--backbone", str(out), "--quiet"]) == 0
    result = json.loads((new / "retrain_result.json").read_text())
    captured = capsys.readouterr()
    assert captured.out == (f"retrain: test accuracy {result['test_accuracy']:.4f} ({result['test_images']} images, "
                            f"last epoch) -> {new / 'export'}\n")
    assert captured.err == ""


# ---- own data: an ImageFolder with train/ and test/ only (issue 24) ----------------------------

def make_train_test_folder(root: Path, classes=("cat", "dog", "fox"), n_train=8, n_test=3) -> None:
    """Class c's images are noise around a grey level of its own, 12x10 px (not the model's 16)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        for k, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(60 + 70 * k + rng.normal(0, 20, (10, 12, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")


def test_imagefolder_with_val_fraction_runs_end_to_end(tmp_path, capsys):
    """`unitune run` on a train/ + test/ ImageFolder: val is held out of train/ (val_fraction),
    the split and the config are recorded in the run folder, the resize is noted once, and a
    rerun on a changed train/ is refused before any work."""
    from unitune.data import transforms

    transforms._NOTED.clear()
    make_train_test_folder(tmp_path / "images")
    config = write_config(tmp_path, pretrain=None, data={"source": "imagefolder", "root": str(tmp_path / "images"),
                                                         "val_fraction": 0.25, "batch_size": 8, "num_workers": 0},
                          search__trials=3, search__rerank={"top_k": 0}, supernet__epochs=1, retrain__epochs=1)
    out = tmp_path / "out"
    assert main(["run", "--config", str(config), "--out", str(out), "--quiet"]) == 0
    captured = capsys.readouterr()
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["complete"] and summary["test_images"] == 9
    assert "test accuracy" in captured.out
    notes = [ln for ln in captured.err.splitlines() if ln.startswith("unitune: note: images are resized")]
    assert notes == [f"unitune: note: images are resized to 16x16 px, the backbone's input size "
                     f"({tmp_path / 'images' / 'train' / 'cat' / '0.png'} is 12x10; data.resize: squash)"]
    # The split: 2 of each class's 8 images held out, recorded with the fraction and the seed.
    split = json.loads((out / "data_split.json").read_text())
    assert (split["val_fraction"], split["seed"]) == (0.25, 0)
    assert [p.split("/")[0] for p in split["val"]] == ["cat"] * 2 + ["dog"] * 2 + ["fox"] * 2
    assert sorted(split["train"] + split["val"]) == sorted(
        p.relative_to(tmp_path / "images" / "train").as_posix() for p in (tmp_path / "images" / "train").rglob("*.png"))
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'study.db'}")
    assert study.user_attrs["val_images"] == 6  # the search scored on the held-out images
    assert yaml.safe_load((out / "run_config.yaml").read_text())["data"]["val_fraction"] == 0.25
    # A rerun in the same folder after train/ changed would score on other val images: refused.
    shutil.copy(tmp_path / "images" / "train" / "cat" / "0.png", tmp_path / "images" / "train" / "dog" / "extra.png")
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert main(["run", "--config", str(config), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"unitune: error: {out / 'data_split.json'}: {tmp_path / 'images'}/train changed since this run "
                   f"split it (1 image added, 0 images removed, e.g. added 'dog/extra.png'), so the val split would "
                   f"change; "
                   f"restore the files or use another run folder (--out)"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    # A test split without a class: refused, or, when allowed, that class scored "n/a", not 0.
    shutil.rmtree(tmp_path / "images" / "test" / "fox")
    evaluate = ["evaluate", str(out / "export"), "--config", str(config), "--out", str(tmp_path / "ev")]
    assert main(evaluate) == 2
    assert "the test split" in capsys.readouterr().err and not (tmp_path / "ev").exists()
    assert main([*evaluate, "data.allow_missing_classes=true"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"  {'fox':<20} n/a (no images)" in lines and any(ln.startswith("  cat ") for ln in lines)
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["per_class_accuracy"]["fox"] is None and metrics["images"] == 6
    assert all(0 <= metrics["per_class_accuracy"][c] <= 1 for c in ("cat", "dog"))


def test_inspect_reads_folders_made_by_the_stage_commands(tmp_path, capsys):
    """supernet + search make a folder without run_summary.json; inspect reads the run's own
    (depth-2) backbone from the config the stages recorded, as does a `retrain --subnet` folder
    (its export's subnet). Before, inspect built the default 12-block backbone and failed."""
    from unitune.engine.backbone import create_backbone

    config = write_config(tmp_path, pretrain=None, search__trials=3, search__rerank={"top_k": 0},
                          supernet__epochs=1, retrain__epochs=1)
    out, other = tmp_path / "stages", tmp_path / "retrained"
    for argv in (["supernet"], ["search"], ["retrain", "--subnet", str(out / "best_subnet.yaml"), "--out", str(other)]):
        target = [] if "--out" in argv else ["--out", str(out)]
        assert main([*argv, "--config", str(config), *target, "--quiet"]) == 0, argv
    capsys.readouterr()
    assert not (out / "run_summary.json").exists()
    run = load_run_config(config)
    dims = BackboneDims.from_model(create_backbone(run.model.backbone, 3, kwargs=run.model.kwargs, meta=True))
    best = Subnet.load(out / "best_subnet.yaml")
    expected = count_params(best, dims, SearchSpace.from_dict(run.space))
    for folder in (out, other):
        assert main(["inspect", str(folder), "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown["subnet"] == best.to_dict()["subnet"]
        assert (shown["trainable_params"], shown["head_params"]) == (expected.total, expected.head)
        assert shown["num_classes"] == 3
    # A folder that records no config (an older unitune's): the error says what to give.
    (out / "run_config.yaml").unlink()
    assert main(["inspect", str(out)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"unitune: error: {out / 'best_subnet.yaml'}: lists have 2 entries, but the backbone has 12 blocks "
        f"({out} records no config; give the run's --config)"]


def test_a_second_run_keeps_the_stage_times_and_does_not_redo_the_search_or_rerank(tiny_run, monkeypatch):
    """The study is complete and best_subnet.yaml holds the re-rank's pick: a second `run` skips
    the search with the time the first run recorded, and neither searches nor re-ranks again."""
    import unitune.search.stage as stage

    config, out, first = tiny_run
    assert (out / "trials.csv").is_file() and (out / "trials.md").is_file()
    assert first["search_reranked"] and first["pick_standalone_val_accuracy"] is not None  # re-rank on by default
    called = []
    monkeypatch.setattr(stage, "rerank", lambda *a, **k: called.append("rerank"))
    monkeypatch.setattr(stage, "run_search", lambda *a, **k: called.append("search"))
    stamps = {name: (out / name).stat().st_mtime_ns for name in ("best_subnet.yaml", "trials.csv", "study.db")}
    again = run_all(load_run_config(config), out, progress=False)
    assert called == []
    assert {name: (out / name).stat().st_mtime_ns for name in stamps} == stamps
    assert "search" in again["skipped"] and again["seconds"]["search"] == first["seconds"]["search"]
    assert again["seconds"]["supernet"] == first["seconds"]["supernet"]
    for key in ("search_best_trial", "search_best_val_accuracy", "search_best_val_trial", "pick_standalone_val_accuracy",
                "test_accuracy", "rerank_tau"):
        assert again[key] == first[key], key
    # the figures against the study itself
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'study.db'}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    top = max(complete, key=lambda t: (t.values[0], -t.number))
    assert (again["search_best_val_accuracy"], again["search_best_val_trial"]) == (top.values[0], top.number)
    record = study.user_attrs["rerank"]
    assert record["winner"] == again["search_best_trial"]
    row = next(r for r in record["candidates"] if r["trial"] == record["winner"])
    assert again["pick_standalone_val_accuracy"] == row["standalone_val_accuracy"]
    assert again["pick_val_accuracy"] == study.trials[record["winner"]].values[0]


def test_a_second_run_with_another_space_is_refused_not_skipped(tiny_run, tmp_path):
    """The finished search is skipped only for the settings it was made with: another space runs
    the stage, which refuses in one line (before, nothing would have said the study was stale)."""
    from unitune.errors import UniTuneError

    config, out, _ = tiny_run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    changed = write_config(tmp_path, space__lora=[0, 1])
    with pytest.raises(UniTuneError) as e:
        run_all(load_run_config(changed), copy, progress=False)
    assert "\n" not in str(e.value) and "space" in str(e.value)


def test_a_second_run_with_another_retrain_recipe_re_ranks_again(tiny_run, tmp_path, monkeypatch):
    """The re-rank's stand-alone scores depend on the retrain recipe: after retrain.lr changes a
    second run does not skip the finished search, it re-ranks (the pick could change)."""
    import unitune.search.stage as stage

    config, out, _ = tiny_run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)

    class Reranked(Exception):
        pass

    def rerank(*args, **kwargs):
        raise Reranked

    monkeypatch.setattr(stage, "rerank", rerank)
    same = load_run_config(config)
    assert stage.finished_search(same, copy) is not None  # the same recipe: finished, skipped
    changed = load_run_config(write_config(tmp_path, retrain__lr=CONFIG["retrain"]["lr"] * 2))
    assert stage.finished_search(changed, copy) is None
    with pytest.raises(Reranked):
        run_all(changed, copy, progress=False)
