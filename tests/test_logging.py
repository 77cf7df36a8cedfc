"""What a stage leaves besides its JSONL log: the CSV and TensorBoard loggers (``logging:``), the
curves (``plots/curves.png``); the learning rate in the epoch line and the line's width; and
warnings as the command line prints them (one line, other packages' repeats once)."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from unitune.commands.cli import main
from unitune.curves import write_curves
from unitune.errors import UniTuneWarning
from unitune.progress import StageProgress
from unitune.stagelog import StageLog

ROOT = Path(__file__).parent.parent
DEMO = ROOT / "configs" / "demo.yaml"
ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "COLUMNS")} | {"OMP_NUM_THREADS": "1"}


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """TensorBoard's own reader over an event folder: ``tag -> [(step, value)]``."""
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(s.step, s.value) for s in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_logging_tensorboard_and_csv_mirror_the_pretrain_log(tmp_path, capsys):
    """A real stage (the demo's pretrain, 3 epochs) with ``logging=[tensorboard, csv]``."""
    out = tmp_path / "run"
    assert main(["pretrain", "--config", str(DEMO), "--out", str(out), "--quiet", "device=cpu", "pretrain.epochs=3",
                 "pretrain.warmup_epochs=1", "logging=[tensorboard, csv]"]) == 0
    capsys.readouterr()
    records = [json.loads(line) for line in (out / "pretrain" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2]
    assert {"loss", "train_acc", "val_acc", "lr"} <= set(records[0])

    # TensorBoard: every numeric value as a scalar, step = the record's epoch; stored as float32
    scalars = _scalars(out / "tensorboard" / "pretrain")
    assert set(scalars) == set(records[0]) - {"epoch"}
    for tag, points in scalars.items():
        assert [step for step, _ in points] == [0, 1, 2]
        assert [value for _, value in points] == pytest.approx([r[tag] for r in records], rel=1e-6, abs=1e-12)
    # the cosine schedule after one warm-up epoch: lr falls from the peak
    lrs = [v for _, v in scalars["lr"]]
    assert lrs[0] > lrs[1] > lrs[2] > 0

    # CSV: the JSONL's keys as columns, its values exactly (Python writes floats round-trip)
    rows = _csv(out / "pretrain" / "log.csv")
    assert list(rows[0]) == list(records[0])
    assert [{k: float(v) for k, v in row.items()} for row in rows] == [
        {k: float(v) for k, v in r.items()} for r in records]

    # the curves: one stage, one column of three panels
    with Image.open(out / "plots" / "curves.png") as png:
        width, height = png.size
    assert height > width > 200


def test_a_resumed_stage_rewrites_the_csv_and_purges_the_redone_epochs_from_tensorboard(tmp_path):
    log = StageLog(tmp_path / "retrain_log.jsonl", "retrain", tmp_path, ("tensorboard", "csv"))
    for epoch in range(3):
        log.write({"epoch": epoch, "loss": 1.0 - epoch / 10, "lr": 0.001})
    # killed after epoch 2 (no close), resumed from the checkpoint of epoch 1
    log = StageLog(tmp_path / "retrain_log.jsonl", "retrain", tmp_path, ("tensorboard", "csv"), resume_epoch=1)
    for epoch in range(1, 4):
        log.write({"epoch": epoch, "loss": 2.0 + epoch, "lr": 0.002})
    log.close()
    expected = [(0, 0.9999999), (1, 3.0), (2, 4.0), (3, 5.0)]
    got = _scalars(tmp_path / "tensorboard" / "retrain")["loss"]
    assert [s for s, _ in got] == [0, 1, 2, 3] and [v for _, v in got] == pytest.approx([v for _, v in expected])
    assert [(int(r["epoch"]), float(r["loss"])) for r in _csv(tmp_path / "retrain_log.csv")] == [
        (0, 1.0), (1, 3.0), (2, 4.0), (3, 5.0)]
    assert (tmp_path / "plots" / "curves.png").is_file()
    # a fresh start (no resume) begins new curves: the old event files go
    fresh = StageLog(tmp_path / "retrain_log.jsonl", "retrain", tmp_path, ("tensorboard",))
    fresh.write({"epoch": 0, "loss": 7.0, "lr": 0.001})
    fresh.close()
    assert _scalars(tmp_path / "tensorboard" / "retrain")["loss"] == [(0, 7.0)]


def test_curves_have_a_column_per_stage_log_and_none_without_logs(tmp_path):
    assert write_curves(tmp_path) is None and not (tmp_path / "plots").exists()
    (tmp_path / "pretrain").mkdir()
    logs = {"pretrain/log.jsonl": {"loss": 1.0, "train_acc": 0.5, "val_acc": 0.4},  # an old log: no lr
            "supernet_log.jsonl": {"loss": 1.0, "val_acc_largest": 0.5, "val_acc_smallest": 0.3, "lr": 1e-3}}
    for name, record in logs.items():
        (tmp_path / name).write_text("".join(json.dumps({"epoch": e, **record}) + "\n" for e in range(2)))
    with Image.open(write_curves(tmp_path)) as png:
        two = png.size
    (tmp_path / "retrain_log.jsonl").write_text(json.dumps({"epoch": 0, "loss": 1.0, "train_acc": 0.5}) + "\n")
    with Image.open(write_curves(tmp_path)) as png:
        three = png.size
    assert three[1] == two[1] and three[0] > two[0] * 1.3  # a third column, same height


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _epoch_lines(columns: int, monkeypatch) -> list[str]:
    import unitune.progress

    clock = iter([100.0, 100.5])  # the bar starts, the epoch ends half a second later: 2,000 img/s
    monkeypatch.setattr(unitune.progress.time, "perf_counter", lambda: next(clock))
    monkeypatch.setenv("COLUMNS", str(columns))
    stream = io.StringIO()  # not a terminal: COLUMNS, else 80
    bar = StageProgress("supernet", 40, 1000, stream=stream, metric="val_acc_largest", start_epoch=9)
    bar.step(1000, 1.0)
    bar.epoch_end(9, loss=1.23456, val_acc_largest=0.78125, val_acc_smallest=0.51234, lr=3.2e-4)
    bar.close()
    return stream.getvalue().splitlines()


def test_the_epoch_line_shows_the_lr_and_wraps_between_fields(monkeypatch):
    (wide,) = _epoch_lines(160, monkeypatch)  # wide enough: one line
    # 30 epochs of 1,000 images left at 2,000 img/s: 15 s
    assert wide.split("  ") == ["[supernet] epoch 10/40", "loss 1.2346", "val_acc_largest 0.7812",
                                "val_acc_smallest 0.5123", "lr 3.2e-04", "2,000 img/s", "eta 00:15"], wide
    lines = _epoch_lines(80, monkeypatch)  # 120 characters on an 80-column screen
    assert len(wide) > 80 and len(lines) == 2 and all(len(line) <= 80 for line in lines), lines
    # broken between two fields, the rest indented under the first field's text
    assert lines[1].startswith(" " * len("[supernet] ")) and not lines[1][len("[supernet] ")].isspace()
    assert "  ".join([lines[0], lines[1].strip()]) == wide


def test_budget_warning_is_one_line_in_the_tools_voice(capsys):
    """The library warns the Python way; the CLI prints ``unitune: warning: ...`` and no source
    line; another package's repeated warning once."""
    from search_util import tiny_dims

    from unitune.supernet.budget import check_budget
    from unitune.supernet import SearchSpace
    from unitune.voice import tool_voice

    dims = tiny_dims()

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        with tool_voice():
            check_budget(10**9, SearchSpace(), dims)
            for _ in range(3):
                warnings.warn_explicit("a strange value\n  (twice)", UserWarning, str(Path(pytest.__file__)), 7)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2, err
    assert err[0].startswith("unitune: warning: budget: 1000000000 parameters is at or above the largest subnet")
    assert err[0].endswith("every subnet fits, so the budget does not constrain the search")
    assert err[1] == "pytest: warning: a strange value (twice)"
    with pytest.warns(UniTuneWarning, match="largest subnet"):  # outside the CLI: a real warning
        check_budget(10**9, SearchSpace(), dims)


def test_compare_quick_prints_each_warning_once_in_one_line(tmp_path):
    """Every one-step schedule makes timm log "Cosine annealing scheduler will have no effect"; a
    quick comparison printed it once per schedule (49 times in a whole --quick run). A budget above
    the largest subnet printed Python's ``file:line: UserWarning:`` and the source line after it."""
    args = ["compare", "--config", str(ROOT / "configs" / "minivtab.yaml"), "--quick", "--out", str(tmp_path / "run"),
            "--tasks", "location", "--methods", "linear,search", "--seeds", "0", "--quiet", "search.budget=100M",
            "search.rerank={top_k: 0}"]
    proc = subprocess.run([sys.executable, "-m", "unitune", *args], env=ENV, cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    timm = [line for line in lines if "Cosine annealing scheduler will have no effect" in line]
    assert timm == ["timm: warning: Cosine annealing scheduler will have no effect on the learning rate since "
                    "t_initial = t_mul = eta_mul = 1."], proc.stderr
    budget = [line for line in lines if "budget" in line]
    assert len(budget) == 1 and re.fullmatch(r"unitune: warning: budget: 100000000 parameters is at or above the "
                                             r"largest subnet of this space \(\d+ parameters\); every subnet fits, "
                                             r"so the budget does not constrain the search", budget[0]), budget
    assert lines == [*timm, *budget] or lines == [*budget, *timm], proc.stderr  # nothing else: no source line
