"""``unitune compare`` on the offline mini VTAB suite (``configs/minivtab.yaml --quick``, tiny sizes)."""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import unitune.commands.compare as compare
from unitune.commands.cli import main
from unitune.commands.compare import report as compare_report
from unitune.commands.compare import run as compare_run
from unitune.data import DataConfig, build_dataset
from unitune.data.minivtab import MiniVtabDataset
from unitune.errors import UniTuneError

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "minivtab.yaml"
TASKS = ("count", "terrain")  # one structured, one specialized: two groups
METHODS = compare.METHODS
QUICK_TEST = 32  # compare.quick's data.split_sizes test size


def load_events(monkeypatch) -> list[tuple]:
    """Record every image a minivtab dataset renders (task, split of the item, index) and every
    cell result written, in order."""
    events: list[tuple] = []
    real_load, real_write = MiniVtabDataset.load, compare_run.write_json_atomic

    def load(self, index):
        events.append(("load", self.task, self.items[index][0], self.items[index][1]))
        return real_load(self, index)

    def write(path, data):
        real_write(path, data)
        if Path(path).parent.parent.name == "cells":
            events.append(("cell", data["task"], data["method"], data["seed"]))

    monkeypatch.setattr(MiniVtabDataset, "load", load)
    monkeypatch.setattr(compare_run, "write_json_atomic", write)
    return events


def test_reads_of_test(events: list[tuple], n_test: int) -> None:
    """The test split is read only at the end of each cell: in the events up to a cell's result,
    no test image before the cell's training is over, then the cell's task's test images, each
    exactly once, then nothing but the result."""
    segment: list[tuple] = []
    for e in events:
        if e[0] != "cell":
            segment.append(e)
            continue
        tests = [i for i, s in enumerate(segment) if s[2] == "test"]
        assert tests, f"cell {e[1:]} scored without reading its test split"
        first = tests[0]
        assert all(s[2] == "test" for s in segment[first:]), f"cell {e[1:]}: train/val read after the test split"
        assert {s[1] for s in segment[first:]} == {e[1]}, f"cell {e[1:]} read another task's test split"
        indices = [s[3] for s in segment[first:]]
        assert sorted(indices) == list(range(n_test)), f"cell {e[1:]}: test images read {len(indices)} times"
        segment = []
    assert not [s for s in segment if s[2] == "test"], "the test split was read after the last cell"


test_reads_of_test.__test__ = False  # a checker, not a test


FIGURES: list = []  # the accuracy_vs_params figures quick_run drew, as saved


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One quick comparison of two tasks, every method, seed 0, with every image read recorded."""
    mp = pytest.MonkeyPatch()
    events = load_events(mp)
    real_figure = compare_report.accuracy_figure
    mp.setattr(compare_report, "accuracy_figure", lambda *a, **k: FIGURES.append(real_figure(*a, **k)) or FIGURES[-1])
    out = tmp_path_factory.mktemp("compare") / "run"
    try:
        code = main(["compare", "--config", str(CONFIG), "--quick", "--out", str(out), "--tasks", ",".join(TASKS),
                     "--quiet"])
    finally:
        mp.undo()
    assert code == 0
    return out, events


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_quick_writes_csv_table_and_plot(quick_run):
    out, _ = quick_run
    rows = read_csv(out / "results.csv")
    assert [(r["task"], r["method"], r["seed"]) for r in rows] == [(t, m, "0") for t in TASKS for m in METHODS]
    assert list(rows[0]) == list(compare.CSV_COLUMNS)
    by = {(r["task"], r["method"]): r for r in rows}
    for r in rows:
        assert 0.0 <= float(r["test_accuracy"]) <= 1.0
        assert int(r["test_images"]) == QUICK_TEST
        assert int(r["epochs"]) == 1
        assert int(r["params_with_head"]) > int(r["params"]) >= 0
    # Parameter counts against the formulas of DESIGN.md on the 4-block, width-64 backbone (budget 6k):
    # the largest uniform size within it per method.
    d, depth = 64, 4
    assert int(by["count", "linear"]["params"]) == 0
    assert int(by["count", "lora"]["params"]) == 4 * d * 4 * depth  # r=4 (r=8: 8,192 > 6k)
    assert int(by["count", "adapter"]["params"]) == (2 * d * 8 + 8 + d) * depth  # k=8: 4,384
    assert int(by["count", "vpt"]["params"]) == 8 * d * depth  # p=8
    assert int(by["count", "ssf"]["params"]) == 22 * d * depth + 4 * d  # all blocks + global: 5,888
    assert int(by["count", "search"]["params"]) <= 6000
    heads = {"count": 8, "terrain": 4}  # classes; the head is d*K + K
    for t, k in heads.items():
        assert int(by[t, "linear"]["params_with_head"]) == d * k + k
        full = by[t, "full"]
        assert int(full["params_with_head"]) - int(full["params"]) == d * k + k
    # The table's mean of group means, recomputed from the CSV (one seed: the mean of the two tasks,
    # with no spread: a "± 0.0" read as a measured one).
    table = (out / "table.md").read_text()
    for m in METHODS:
        line = next(ln for ln in table.splitlines() if ln.startswith(f"| {m} |"))
        expected = statistics.fmean(100 * float(by[t, m]["test_accuracy"]) for t in TASKS)
        assert f"**{expected:.1f}** |" in line and "±" not in line, (m, line)
    # --quick says so first; one seed, one epoch in the singular; each task's head, not their mean.
    assert table.startswith(f"**{compare.QUICK_NOTE}**")
    assert "with head" not in table
    assert "one seed (0), so no spread; 1 epoch on trainval for every row" in table
    assert "every row also trains the task's head: " + \
        ", ".join(f"{t} {d * k + k:,}" for t, k in heads.items()) + "." in table
    assert "structured mean" in table and "specialized mean" in table
    # Search minus each single method, recomputed from the CSV, and the re-rank's tau per task.
    paired = table[table.index("Search minus each single method"):]
    for m in ("lora", "adapter", "vpt", "ssf"):
        diffs = [100 * (float(by[t, "search"]["test_accuracy"]) - float(by[t, m]["test_accuracy"])) for t in TASKS]
        line = next(ln for ln in paired.splitlines() if ln.startswith(f"| {m} | "))
        assert f"| {statistics.fmean(diffs):+.1f} ± {statistics.stdev(diffs):.1f} | {sum(d > 0 for d in diffs)}/2 |" \
            in line, (m, line)
    for t in TASKS:
        meta = yaml.safe_load((out / "tasks" / t / "search" / "best_subnet.yaml").read_text())["meta"]
        line = next(ln for ln in paired.splitlines() if ln.startswith(f"| {t} | "))
        assert line.startswith(f"| {t} | {meta['kendall_tau']:.2f} (n={meta['kendall_n']}, 95% CI"), line
        assert line.endswith(f"| {meta['n_params']:,} | {by[t, 'search']['sizes']} |"), line
    with Image.open(out / "accuracy_vs_params.png") as img:
        assert img.format == "PNG" and img.size[0] > 300
    pre = json.loads((out / "pretrain" / "pretrain_result.json").read_text())
    assert pre["source"]["source"] == "fractal" and 0.0 <= pre["source_val_accuracy"] <= 1.0 and pre["seconds"] > 0
    # Each task's resolved config loads the one pretrained backbone.
    for t in TASKS:
        assert str((out / "pretrain" / "backbone.safetensors").resolve()) in (out / "tasks" / t / "config.yaml").read_text()


def legend_texts(ax) -> list[str]:
    legend = ax.get_legend()
    assert legend is not None, "no legend"
    return [t.get_text() for t in legend.get_texts()]


def test_quick_plot_has_a_legend_and_says_quick(quick_run):
    """The figure saved as accuracy_vs_params.png: one legend entry per method at its point (labels
    beside the points overlapped), the --quick note, the counts in the singular, no label cut off."""
    out, _ = quick_run
    rows = read_csv(out / "results.csv")
    fig = FIGURES[-1]
    (ax,) = fig.axes
    assert legend_texts(ax) == list(METHODS)
    assert not ax.texts  # no annotations beside the points
    for m, container in zip(METHODS, ax.containers):
        params = statistics.fmean(int(r["params"]) for r in rows if r["method"] == m)  # the head excluded
        acc = statistics.fmean(100 * float(r["test_accuracy"]) for r in rows if r["method"] == m)
        x, y = container.lines[0].get_data()
        assert (x[0], y[0]) == (pytest.approx(params), pytest.approx(acc)), m
        assert not container.has_yerr  # one seed: no error bar
    assert [t.get_text() for t in fig.texts] == [compare.QUICK_NOTE]
    assert ax.get_title() == "minivtab: 2 tasks, 1 seed"
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    box, page = ax.yaxis.label.get_window_extent(renderer), fig.bbox
    assert page.y0 <= box.y0 and box.y1 <= page.y1, "the y label is taller than the figure"


def test_test_split_is_read_only_at_the_end_of_each_cell(quick_run):
    _, events = quick_run
    assert sum(e[0] == "cell" for e in events) == len(TASKS) * len(METHODS)
    assert any(e[0] == "load" and e[2] == "train" for e in events)
    test_reads_of_test(events, QUICK_TEST)


def test_the_checker_catches_an_early_test_read():
    """The instrument above fails on what it must catch: a test image read during training, twice,
    or before any cell (a search scoring subnets on test)."""
    train = [("load", "count", "train", i) for i in range(2)]
    test = [("load", "count", "test", i) for i in range(2)]
    cell = [("cell", "count", "lora", 0)]
    test_reads_of_test(train + test + cell, 2)
    for bad in (test[:1] + train + test + cell, train + test + test[:1] + cell, train + test + train + cell,
                train + test + cell + test[:1]):
        with pytest.raises(AssertionError):
            test_reads_of_test(bad, 2)


def red_pixels(img: Image.Image) -> int:
    rgb = np.asarray(img.convert("RGB")).astype(int)
    return int(((rgb[..., 0] > 180) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)).sum())


def test_quick_search_plots_are_stamped(quick_run):
    """The search stage's plots of a --quick comparison carry the note too (in red above the plot,
    and as the PNG's ``unitune`` text)."""
    out, _ = quick_run
    for t in TASKS:
        pngs = sorted((out / "tasks" / t / "search" / "plots").glob("*.png"))
        assert {p.name for p in pngs} >= {"history.png", "pareto.png", "sizes_heatmap.png", "rerank_tau.png"}
        for p in pngs:
            with Image.open(p) as img:
                assert img.text.get("unitune") == compare.QUICK_NOTE, p
                assert red_pixels(img.crop((0, 0, img.width, 30))) > 50, p


def test_stamp_quick_adds_a_band_above_and_keeps_the_plot(tmp_path):
    path = tmp_path / "plot.png"
    rng = np.random.default_rng(0)
    plot = rng.integers(0, 255, (120, 640, 3), dtype=np.uint8)
    plot[..., 1] = 255  # no red pixel of its own
    Image.fromarray(plot).save(path)
    compare.stamp_quick(path)
    with Image.open(path) as img:
        assert img.size == (640, 150) and img.text == {"unitune": compare.QUICK_NOTE}
        assert np.array_equal(np.asarray(img.convert("RGB"))[30:], plot)
        assert red_pixels(img.crop((0, 0, 640, 30))) > 50


def synthetic_rows(seeds, methods=("linear", "lora")) -> list[dict]:
    """Cells of two tasks (heads 520 and 260) whose accuracies differ by seed."""
    return [{"task": t, "method": m, "seed": s, "test_accuracy": base + 0.125 * s + 0.0625 * i + 0.01 * s * s * i,
             "params": 100 * i, "params_with_head": 100 * i + head, "seconds": 1.0}
            for t, base, head in (("a", 0.5, 520), ("b", 0.25, 260)) for i, m in enumerate(methods) for s in seeds]


GROUPS = {"a": "natural", "b": "structured"}


def test_summary_by_hand_and_the_results_frame():
    """The summary against a computation by hand (three seeds, groups of one and two tasks, rows
    in any order); the frame is the plan's cells in order, and a missing cell is named."""
    seeds, tasks, groups = (0, 1, 2), ("a", "b", "c"), {"a": "natural", "b": "structured", "c": "structured"}
    rows = [{"task": t, "method": m, "seed": s, "test_accuracy": (1 + s + 3 * i + 7 * j) / 64,
             "params": 10 * j + s, "params_with_head": 1000 + i, "seconds": 0.5 * s}
            for i, t in enumerate(tasks) for j, m in enumerate(("lora", "vera")) for s in seeds][::-1]
    summary = compare.summarise(rows, tasks, groups, seeds, ("vera", "lora"))
    assert list(summary) == ["vera", "lora"]
    for j, m in ((1, "vera"), (0, "lora")):
        acc = {(i, s): 100 * (1 + s + 3 * i + 7 * j) / 64 for i in range(3) for s in seeds}
        got = summary[m]
        assert got["tasks"] == {t: (statistics.fmean(acc[i, s] for s in seeds), statistics.stdev(acc[i, s] for s in seeds))
                                for i, t in enumerate(tasks)}
        natural = [acc[0, s] for s in seeds]
        structured = [(acc[1, s] + acc[2, s]) / 2 for s in seeds]
        assert got["groups"]["natural"] == pytest.approx((statistics.fmean(natural), statistics.stdev(natural)))
        assert got["groups"]["structured"] == pytest.approx((statistics.fmean(structured), statistics.stdev(structured)))
        headline = [(a + b) / 2 for a, b in zip(natural, structured)]
        assert got["mean_of_groups"] == pytest.approx((statistics.fmean(headline), statistics.stdev(headline)))
        assert got["params"] == 10 * j + 1 and got["params_per_task"] == {t: 10 * j + 1 for t in tasks}
        assert got["params_with_head"] == {t: 1000 + i for i, t in enumerate(tasks)} and got["seconds"] == 0.5
    frame = compare.results_frame(rows, tasks, groups, seeds, ("vera",))
    assert list(zip(frame["task"], frame["method"], frame["seed"])) == [(t, "vera", s) for t in tasks for s in seeds]
    assert list(frame["group"]) == [groups[t] for t in tasks for _ in seeds]
    with pytest.raises(KeyError, match="'c', 'vera', 2"):
        compare.summarise(rows[1:], tasks, groups, seeds, ("vera",))  # rows[0] is c/vera/seed 2


@pytest.mark.parametrize("seeds", [(0,), (0, 1), (0, 1, 2)])
def test_the_table_shows_a_spread_only_from_two_seeds(seeds):
    rows = synthetic_rows(seeds)
    summary = compare.summarise(rows, ("a", "b"), GROUPS, seeds, ("linear", "lora"))
    table = compare.format_table(summary, ("a", "b"), GROUPS, len(seeds))
    for m in ("linear", "lora"):
        accs = {t: [100 * r["test_accuracy"] for r in rows if r["method"] == m and r["task"] == t] for t in "ab"}
        headline = [statistics.fmean([accs["a"][k], accs["b"][k]]) for k in range(len(seeds))]  # one task a group
        expected = [accs["a"], accs["b"], accs["a"], accs["b"], headline]  # tasks, group means, mean of groups
        if len(seeds) == 1:
            cells = [f"{v[0]:.1f}" for v in expected]
        else:
            cells = [f"{statistics.fmean(v):.1f} ± {statistics.stdev(v):.1f}" for v in expected]
        cells[-1] = f"**{cells[-1]}**"
        params = statistics.fmean(r["params"] for r in rows if r["method"] == m)
        assert f"| {m} | {params:,.0f} | " + " | ".join(cells) + " |" in table.splitlines(), table
    assert ("±" in table) == (len(seeds) > 1)


def test_the_paired_table_shows_a_spread_only_from_two_pairs():
    for tasks, seeds in ((("a",), (0,)), (("a",), (0, 1)), (("a", "b"), (0,))):
        rows = [r for r in synthetic_rows(seeds, ("lora", "search")) if r["task"] in tasks]
        (paired,) = compare.paired_vs_single(rows, tasks, seeds, ("lora", "search"))
        diffs = [100 * (a["test_accuracy"] - b["test_accuracy"]) for a, b in
                 zip([r for r in rows if r["method"] == "search"], [r for r in rows if r["method"] == "lora"])]
        text = compare.format_paired([paired], {})
        line = next(ln for ln in text.splitlines() if ln.startswith("| lora |"))
        if len(diffs) == 1:
            assert "| search - it | search wins |" in text and f"| {diffs[0]:+.1f} | 1/1 |" in line, text
        else:
            assert "| search - it, mean ± std |" in text, text
            assert f"| {statistics.fmean(diffs):+.1f} ± {statistics.stdev(diffs):.1f} | 2/2 |" in line, text


def test_the_notes_count_in_the_singular_and_name_each_head():
    rows = synthetic_rows((0,), ("linear", "search"))
    rows[-1]["params"], rows[-1]["params_with_head"] = 300, 560  # the search picked another size on task b
    summary = compare.summarise(rows, ("a", "b"), GROUPS, (0,), ("linear", "search"))
    heads = compare.head_sizes(rows, ("a", "b"))
    assert heads == {"a": [520], "b": [260]}
    one = compare.format_notes((0,), 1, "c.yaml", heads, summary)
    assert one[0] == "Test accuracy % after the last epoch, one seed (0), so no spread; 1 epoch on trainval for " \
                     "every row (c.yaml)."
    assert one[1] == "params: trainable parameters without the classification head (mean over tasks for search: " \
                     "its count differs per task); every row also trains the task's head: a 520, b 260."
    two = compare.format_notes((3, 4), 2, "c.yaml", {"a": [1040]}, {"linear": summary["linear"]})
    assert two[0].startswith("Test accuracy % after the last epoch, mean ± std over 2 seeds [3, 4]; 2 epochs on ")
    assert two[1] == "params: trainable parameters without the classification head; every row also trains the " \
                     "task's head: a 1,040."
    table = compare.format_table(summary, ("a", "b"), GROUPS, 1)
    assert "| search | 200 (mean) |" in table and "| linear | 0 |" in table


def test_the_tau_column_says_why_there_is_no_tau():
    """"n/a (no re-rank)" only where no re-rank ran; a re-rank whose tau is undefined says why
    (figures as search/rerank.py's kendall computes them and writes them to the pick's meta)."""
    from unitune.search.rerank import kendall

    def meta(k, fitness="supernet"):
        return {"kendall_tau": k["tau"], "kendall_n": k["n"], "kendall_ci95": k["ci95"], "fitness": fitness}

    assert compare_report._tau_text(meta(kendall([0.5, 0.6], [0.4, 0.7]))) == "undefined (n=2: fewer than 3 subnets)"
    assert compare_report._tau_text(meta(kendall([0.5, 0.6, 0.7], [0.4, 0.4, 0.4]))) == \
        "undefined (n=3: the inherited or the stand-alone scores all equal)"
    assert compare_report._tau_text(meta(kendall([0.5, 0.5, 0.5], [0.4, 0.6, 0.5]))).startswith("undefined (n=3: ")
    k = kendall([0.5, 0.6, 0.7, 0.8], [0.4, 0.6, 0.5, 0.9])
    assert compare_report._tau_text(meta(k)) == f"{k['tau']:.2f} (n=4, 95% CI [{k['ci95'][0]:.2f}, {k['ci95'][1]:.2f}])"
    none = {"kendall_tau": None, "kendall_n": None, "kendall_ci95": None}  # a pick's meta without a re-rank
    assert compare_report._tau_text({**none, "fitness": "supernet"}) == "n/a (no re-rank)"
    assert compare_report._tau_text({**none, "fitness": "standalone"}) == \
        "n/a (stand-alone fitness: no supernet ranking to check)"


@pytest.mark.parametrize("n_seeds, quick", [(1, False), (2, True), (3, False)])
def test_the_plot_draws_error_bars_from_two_seeds_and_marks_quick(n_seeds, quick):
    seeds = tuple(range(n_seeds))
    summary = compare.summarise(synthetic_rows(seeds), ("a", "b"), GROUPS, seeds, ("linear", "lora"))
    fig = compare.accuracy_figure(summary, f"t: 2 tasks, {n_seeds} seeds", n_seeds, quick)
    (ax,) = fig.axes
    assert legend_texts(ax) == ["linear", "lora"]
    for container, s in zip(ax.containers, summary.values()):
        assert container.has_yerr == (n_seeds > 1)
        if n_seeds > 1:  # the bar spans mean ± std of the mean of group means
            (bar,) = container.lines[2]
            (segment,) = bar.get_segments()
            mean, std = s["mean_of_groups"]
            assert [y for _, y in segment] == [pytest.approx(mean - std), pytest.approx(mean + std)]
    assert ("± std over seeds" in ax.get_ylabel()) == (n_seeds > 1)
    assert [t.get_text() for t in fig.texts] == ([compare.QUICK_NOTE] if quick else [])


KILL_AFTER_CELLS = r"""
import os, signal, sys
from pathlib import Path
import unitune.commands.compare.run as compare
real, written = compare.write_json_atomic, []
def write(path, data):
    real(path, data)
    if Path(path).parent.parent.name == "cells":
        written.append(path)
        if len(written) == int(os.environ["KILL_AFTER"]):
            os.kill(os.getpid(), signal.SIGKILL)
compare.write_json_atomic = write
from unitune.commands.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_killed_compare_resumes_without_redoing_finished_cells(tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = ["compare", "--config", str(CONFIG), "--quick", "--out", str(out), "--tasks", "location",
            "--methods", "linear,lora,full", "--seeds", "0,1", "--quiet"]
    env = {**os.environ, "KILL_AFTER": "2", "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_CELLS, *args], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    done = sorted((out / "cells").rglob("*.json"))
    assert [p.name for p in done] == ["linear-seed0.json", "linear-seed1.json"]
    before = {p: p.read_bytes() for p in done}
    assert not (out / "results.csv").exists()

    ran = []
    real_cell = compare_run.run_cell
    monkeypatch.setattr(compare_run, "run_cell", lambda plan, *cell, **kw: ran.append(cell) or real_cell(plan, *cell, **kw))
    assert main(args) == 0
    assert ran == [("location", m, s) for m in ("lora", "full") for s in (0, 1)]
    assert {p: p.read_bytes() for p in done} == before  # finished cells untouched
    rows = read_csv(out / "results.csv")
    assert len(rows) == 6
    assert {(r["method"], r["seed"]) for r in rows} == {(m, s) for m in ("linear", "lora", "full") for s in "01"}
    ran.clear()
    assert main(args) == 0 and ran == []  # a third run only rewrites the report
    # Two seeds: each cell is mean ± std over them (the std of two values, from the CSV).
    table = (out / "table.md").read_text()
    assert table.startswith(f"**{compare.QUICK_NOTE}**")
    assert "mean ± std over 2 seeds [0, 1]; 1 epoch on trainval" in table
    for m in ("linear", "lora", "full"):
        accs = [100 * float(r["test_accuracy"]) for r in rows if r["method"] == m]
        line = next(ln for ln in table.splitlines() if ln.startswith(f"| {m} |"))
        assert f"**{statistics.fmean(accs):.1f} ± {statistics.stdev(accs):.1f}**" in line, line


def test_standalone_fitness_search_trains_no_supernet(tmp_path, monkeypatch):
    """``search.fitness: standalone`` trains each trial's subnet itself: compare's search row, like
    ``unitune run``, must not spend a supernet training first (it did, and never read it)."""
    import unitune.engine.supernet_train as supernet_train

    def no_supernet(*args, **kwargs):
        raise AssertionError("train_supernet called for a standalone-fitness search")

    monkeypatch.setattr(supernet_train, "train_supernet", no_supernet)
    out = tmp_path / "run"
    assert main(["compare", "--config", str(CONFIG), "--quick", "--out", str(out), "--tasks", "orientation",
                 "--methods", "search", "--seeds", "0", "--quiet", "search.fitness=standalone",
                 "search.standalone_epochs=1"]) == 0
    search = out / "tasks" / "orientation" / "search"
    assert not (search / "supernet.safetensors").exists()
    record = json.loads((search / "search_result.json").read_text())
    assert record["trials"] == 3 and record["supernet_seconds"] < record["seconds"]
    study = yaml.safe_load((search / "best_subnet.yaml").read_text())
    assert study["subnet"]
    (row,) = read_csv(out / "results.csv")
    assert row["method"] == "search" and 0 <= float(row["test_accuracy"]) <= 1
    assert "| orientation | n/a (stand-alone fitness: no supernet ranking to check) |" in (out / "table.md").read_text()


def test_any_registered_method_is_a_row(tmp_path):
    """Rows come from the method registry: BitFit, DoRA and VeRA (not in the default rows) each at
    the largest size of the space within the 6k budget, counted by their formulas (d = 64, 4 blocks,
    qkv 64 -> 192); and search minus each of them in the paired table."""
    out = tmp_path / "run"
    assert main(["compare", "--config", str(CONFIG), "--quick", "--out", str(out), "--tasks", "location",
                 "--methods", "bitfit,dora,vera", "--seeds", "0", "--quiet",
                 "space.bitfit=[0,1]", "space.dora=[0,2,8]", "space.vera=[0,4,16]"]) == 0
    rows = read_csv(out / "results.csv")
    assert [r["method"] for r in rows] == ["bitfit", "dora", "vera"]
    by = {r["method"]: r for r in rows}
    d, depth = 64, 4
    assert int(by["bitfit"]["params"]) == 11 * d * depth  # the six output widths per block
    assert int(by["dora"]["params"]) == (2 * (d + 3 * d) + 3 * d) * depth  # r=2 (r=8: 8,960 > 6k)
    assert int(by["vera"]["params"]) == (16 + 3 * d) * depth  # r=16: r + out per block
    assert [by[m]["sizes"] for m in ("bitfit", "dora", "vera")] == ["bitfit 1", "dora 2", "vera 16"]
    table = (out / "table.md").read_text()
    for m, r in by.items():
        assert f"| {m} | {int(r['params']):,} | {100 * float(r['test_accuracy']):.1f} |" in table, m


def test_a_row_the_space_gives_no_size_is_refused_up_front(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["compare", "--config", str(CONFIG), "--quick", "--out", str(out), "--quiet",
                 "--methods", "linear,vera"]) == 2
    err = capsys.readouterr().err
    assert err == (f"unitune: error: {CONFIG}: space.vera: has no size above 0 for the 'vera' row; give it sizes "
                   f"(e.g. the override space.vera=[0,4,8]) or drop 'vera' from the methods\n")
    assert not out.exists()


@pytest.mark.parametrize("extra, message", [
    (["--methods", "linear,prompt"], "--methods: unknown method 'prompt', expected some of"),
    (["--tasks", ","], "--tasks: expected a comma-separated list, got an empty one"),
    (["--tasks", ""], "--tasks: expected a comma-separated list, got an empty one"),
    (["--seeds", "0,one"], "--seeds: expected integers like 0,1,2, got 'one'"),
    (["--seeds", "0.5"], "--seeds: expected integers like 0,1,2, got '0.5'"),
    (["--tasks", "count,kitti"], "data (task 'kitti').task: source 'minivtab' has the tasks"),
    (["--jobs", "0"], "--jobs: expected an integer >= 1, got 0"),
    (["--seeds", "0,4294967296"], "--seeds: expected an integer seed in [0, 2**32 - 1], got 4294967296"),
    (["--seeds", "-1"], "--seeds: expected an integer seed in [0, 2**32 - 1], got -1"),
    (["search.fitness=standalone", "retrain.init=supernet"], "search.fitness: standalone trains no supernet"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    assert main(["compare", "--config", str(CONFIG), "--quick", "--out", str(out), "--quiet", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("unitune: error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert not out.exists()


def test_an_out_that_is_a_file_is_one_line_and_exit_2(tmp_path, capsys):
    out = tmp_path / "run"
    out.write_text("not a folder")
    assert main(["compare", "--config", str(CONFIG), "--quick", "--out", str(out), "--quiet", "--tasks", "orientation",
                 "--methods", "linear"]) == 2
    err = capsys.readouterr().err
    assert err == f"unitune: error: --out {out}: exists and is not a folder\n"
    assert out.read_text() == "not a folder"


def test_rerun_with_another_config_into_the_same_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    base = ["compare", "--config", str(CONFIG), "--quick", "--out", str(out), "--tasks", "orientation",
            "--methods", "linear", "--quiet"]
    assert main(base) == 0
    assert main([*base, "retrain.lr=0.01"]) == 2
    assert "holds a comparison of another config" in capsys.readouterr().err


# ---- cell files and compare.json read back: one checked record type (issue 20) ---------------

ONE_CELL = ["--tasks", "orientation", "--methods", "linear", "--seeds", "0,1", "--quiet"]


def finished_cells(out: Path) -> compare.Plan:
    """The plan of ONE_CELL's comparison in ``out``, with both cells' files and compare.json
    written as ``run_compare`` writes them (no training: a rerun checks them before any work)."""
    plan = compare.plan_compare(CONFIG, out, tasks=["orientation"], methods=["linear"], seeds=[0, 1], quick=True)
    for cell in plan.cells:
        row = {"task": cell[0], "group": "structured", "method": cell[1], "seed": cell[2], "test_accuracy": 0.25,
               "test_images": QUICK_TEST, "params": 0, "params_with_head": 260, "epochs": 1, "seconds": 1.5,
               "cpu_seconds": 1.2, "sizes": "none", "stage_seconds": None, "fingerprint": plan.fingerprint}
        plan.cell_file(*cell).parent.mkdir(parents=True, exist_ok=True)
        plan.cell_file(*cell).write_text(json.dumps(row))
    (out / compare.META_FILE).write_text(json.dumps({"fingerprint": plan.fingerprint}))
    return plan


def edit_cell(field: str, value):
    def edit(plan: compare.Plan) -> None:
        path = plan.cell_file("orientation", "linear", 0)
        row = json.loads(path.read_text())
        if value is KeyError:
            del row[field]
        else:
            row[field] = value
        path.write_text(json.dumps(row))
    return edit


def replace_file(name: str, text: str | None):
    def edit(plan: compare.Plan) -> None:
        path = plan.cell_file("orientation", "linear", 0) if name == "cell" else plan.out / name
        path.unlink()
        if text is None:
            path.mkdir()
        else:
            path.write_text(text)
    return edit


def files(folder: Path) -> dict[str, tuple]:
    return {str(p.relative_to(folder)): (p.is_dir(), p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("edit, message", [
    (replace_file("cell", "[0.5, 0.25]"), "linear-seed0.json: expected a JSON object, got list"),
    (replace_file("cell", '"0.5"'), "linear-seed0.json: expected a JSON object, got str"),
    (edit_cell("test_accuracy", KeyError), "linear-seed0.json: missing key 'test_accuracy'"),
    (edit_cell("test_accuracy", "0.5"), "linear-seed0.json: 'test_accuracy' has the wrong type (str)"),
    (edit_cell("test_accuracy", float("nan")), "linear-seed0.json: 'test_accuracy': expected a finite number in [0, 1], got nan"),
    (edit_cell("test_accuracy", 1.5), "'test_accuracy': expected a finite number in [0, 1], got 1.5"),
    (edit_cell("params", True), "linear-seed0.json: 'params' has the wrong type (bool)"),
    (edit_cell("seconds", float("inf")), "'seconds': expected a finite number >= 0, got inf"),
    (edit_cell("note", "x"), "linear-seed0.json: unknown key 'note'"),
    (edit_cell("seed", 1), "linear-seed0.json: holds the cell orientation/linear/1, expected orientation/linear/0"),
    (edit_cell("fingerprint", "0123456789abcdef"), "linear-seed0.json: 'fingerprint' '0123456789abcdef' is of another "
                                                   "comparison"),
    (replace_file(compare.META_FILE, None), "compare.json: is a folder, expected a file"),
    (replace_file(compare.META_FILE, "[1, 2]"), "compare.json: expected the JSON object compare writes (with a "
                                                 "'fingerprint' string), got list"),
    (replace_file(compare.META_FILE, '{"fingerprint": 7}'), "got 'fingerprint' 7"),
])
def test_a_damaged_or_foreign_cell_is_one_line_before_any_work(tmp_path, capsys, edit, message):
    """Cell files and compare.json are read back on a rerun: a damaged, hand-edited or copied one
    is refused at once, naming the file and the key (it was a traceback in the report, or a NaN /
    another comparison's number in the table), and nothing is written."""
    out = tmp_path / "run"
    plan = finished_cells(out)
    for cell in plan.cells:  # the untouched files read back as they were written
        assert plan.read_cell(*cell) == json.loads(plan.cell_file(*cell).read_text())
    edit(plan)
    before = files(out)
    assert main(["compare", "--config", str(CONFIG), "--quick", "--out", str(out), *ONE_CELL]) == 2
    err = capsys.readouterr().err
    assert err.startswith("unitune: error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert files(out) == before


def test_the_report_of_finished_cells_reads_them_through_the_record(tmp_path, capsys):
    """The rerun of a finished comparison only rewrites the report, from the checked records."""
    out = tmp_path / "run"
    finished_cells(out)
    assert main(["compare", "--config", str(CONFIG), "--quick", "--out", str(out), *ONE_CELL]) == 0
    rows = read_csv(out / "results.csv")
    assert [(r["seed"], r["test_accuracy"], r["params_with_head"]) for r in rows] == [("0", "0.25", "260"),
                                                                                      ("1", "0.25", "260")]


@pytest.mark.parametrize("change, message", [
    (lambda c: c["compare"]["groups"].update(specialized=["terrain", "count"]),
     "compare.groups.structured: task 'count' is already in group 'specialized'; a task belongs to one group"),
    (lambda c: c["compare"]["quick"].update(overides={"retrain.epochs": 1}),
     "compare.quick.overides: unknown key, expected one of"),
    (lambda c: c["compare"].update(quick=[1]), "compare.quick: expected a mapping"),
    (lambda c: c["compare"]["quick"].update(overrides=[1]), "compare.quick.overrides: expected a mapping"),
])
def test_compare_section_mistakes_are_one_line_without_quick(tmp_path, capsys, change, message):
    """A task in two groups, or a typo under compare.quick, was accepted silently (the typo by
    every run without --quick, the double task by the group means)."""
    cfg = yaml.safe_load(CONFIG.read_text())
    change(cfg)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    assert main(["compare", "--config", str(path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"unitune: error: {path}: ") and err.count("\n") == 1, err
    assert message in err, err
    assert not out.exists()


# ---- the data sources --------------------------------------------------------------------------

def pixels(cfg: DataConfig, split: str, n: int) -> np.ndarray:
    ds = build_dataset(cfg, split)
    return np.stack([np.asarray(ds.load(i)) for i in range(n)])


def test_fractal_source_is_deterministic_and_seeded():
    cfg = dict(source="fractal", num_classes=5, samples_per_class=4, image_size=32)
    a = pixels(DataConfig.from_dict(cfg), "train", 10)
    assert np.array_equal(a, pixels(DataConfig.from_dict(cfg), "train", 10))
    assert not np.array_equal(a, pixels(DataConfig.from_dict({**cfg, "seed": 1}), "train", 10))
    ds = build_dataset(DataConfig.from_dict(cfg), "train")
    assert len(ds) == 20 and ds.num_classes == 5 and np.bincount(ds.targets).tolist() == [4] * 5
    assert len(build_dataset(DataConfig.from_dict(cfg), "test")) == 10  # max(2, 4 // 10) per class
    assert a.shape == (10, 32, 32, 3) and a.std() > 5  # not blank


def test_minivtab_tasks_have_vtab_sizes_and_disjoint_sources():
    from unitune.data.minivtab import TASKS, _digit_index

    for task in TASKS:
        cfg = DataConfig.from_dict({"source": "minivtab", "task": task})
        sizes = [len(build_dataset(cfg, s)) for s in ("train", "val", "trainval", "test")]
        assert sizes == [800, 200, 1000, 1000], task
    # The digits of the test split are scans that no train or val item uses.
    used = {s: {_digit_index(s, k) for k in range(n)} for s, n in (("train", 800), ("val", 200), ("test", 1000))}
    assert not used["test"] & (used["train"] | used["val"]) and not used["train"] & used["val"]
    with pytest.raises(UniTuneError, match="split_sizes: expected three integers"):
        DataConfig.from_dict({"source": "minivtab", "task": "count", "split_sizes": [800, 200]})


def test_minivtab_textures_crops_share_no_pixel_across_splits():
    """The texture task's crops come from cells of real photos; no pixel of a test cell lies in a
    train or val cell, every class has cells in every split, and a crop stays inside its cell."""
    from unitune.data.minivtab import _CELL, _REGIONS, _photo_cells, _textures

    photos, cells = _photo_cells()
    masks = {s: {p: np.zeros(a.shape[:2], bool) for p, a in photos.items()} for s in cells}
    for split, per_class in cells.items():
        assert len(per_class) == len(_REGIONS) and all(per_class), split
        for class_cells in per_class:
            for photo, y, x in class_cells:
                assert not masks[split][photo][y:y + _CELL, x:x + _CELL].any()  # cells do not overlap
                masks[split][photo][y:y + _CELL, x:x + _CELL] = True
    for photo in photos:
        assert not (masks["test"][photo] & (masks["train"][photo] | masks["val"][photo])).any()
        assert not (masks["train"][photo] & masks["val"][photo]).any()
    ds = build_dataset(DataConfig.from_dict({"source": "minivtab", "task": "textures", "image_size": 24,
                                             "split_sizes": [14, 7, 14]}), "test")
    assert ds.classes == list(_REGIONS) and np.bincount(ds.targets).tolist() == [2] * 7
    img = ds.load(3)
    assert img.size == (24, 24) and np.asarray(img).std() > 0
    # the same item twice: the same image (rendered from (seed, task, split, k))
    assert np.array_equal(np.asarray(img), np.asarray(_textures(np.random.default_rng([0, 6, 2, 3]), 3, 24, "test", 3, 0)))


def test_vtab_recipe_runs_unchanged_on_vtab_lists(tmp_path):
    """``configs/vtab/cifar100.yaml`` as it is (only the data folder, an offline tiny backbone and
    a short schedule overridden): the task comes from data.task and falls in VTAB's natural group."""
    root = tmp_path / "vtab-1k" / "cifar"
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = {}
    for split, n in (("train800", 8), ("val200", 4), ("test", 6)):
        lines[split] = []
        for i in range(n):
            name = f"images/{split}_{i}.png"
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / name)
            lines[split].append(f"{name} {i % 2}")
    lines["train800val200"] = lines["train800"] + lines["val200"]
    for split, ls in lines.items():
        (root / f"{split}.txt").write_text("\n".join(ls) + "\n")
    out = tmp_path / "run"
    tiny = json.dumps({"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 4, "num_heads": 4})
    assert main(["compare", "--config", str(REPO / "configs" / "vtab" / "cifar100.yaml"), "--out", str(out),
                 "--methods", "linear,vpt", "--quiet", f"data.root={tmp_path / 'vtab-1k'}", "model.pretrained=false",
                 f"model.kwargs={tiny}", "data.num_workers=0", "retrain.epochs=1", "retrain.warmup_epochs=0"]) == 0
    rows = read_csv(out / "results.csv")
    assert [(r["task"], r["group"], r["method"], r["test_images"]) for r in rows] == \
        [("cifar", "natural", "linear", "6"), ("cifar", "natural", "vpt", "6")]
    assert int(rows[1]["params"]) == 10 * 64 * 4  # NOAH's largest VPT size, 10 tokens, within 0.43M
    assert compare.QUICK_NOTE not in (out / "table.md").read_text()  # not a --quick run


def test_full_finetuning_is_scored_like_the_peft_rows(tmp_path, monkeypatch):
    """The ``full`` row's test accuracy is scored in fp32 (``amp=False``), as retrain scores every
    PEFT row, and its loaders are told the device (pinned memory only for CUDA), as retrain's are."""
    import unitune.retrain.train as retrain_train  # full fine-tuning is retrain's mode: its names
    from unitune.commands.compare import full_finetune
    from unitune.engine.config import load_run_config

    cfg = {"name": "tiny", "device": "cpu",
           "model": {"backbone": "vit_tiny_patch16_224",
                     "kwargs": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}},
           "data": {"source": "digits", "classes": [5, 6, 7], "batch_size": 64, "num_workers": 0},
           "retrain": {"epochs": 1, "lr": 0.005, "amp": True}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = load_run_config(path)
    amps, devices = [], []
    real_evaluate, real_loader = retrain_train.evaluate, retrain_train.build_loader

    def evaluate(*args, **kwargs):
        amps.append(kwargs.get("amp", args[4] if len(args) > 4 else False))
        return real_evaluate(*args, **kwargs)

    def build_loader(*args, **kwargs):
        devices.append(kwargs.get("device"))
        return real_loader(*args, **kwargs)

    monkeypatch.setattr(retrain_train, "evaluate", evaluate)
    monkeypatch.setattr(retrain_train, "build_loader", build_loader)
    result = full_finetune(run, tmp_path)
    assert amps == [False]
    assert devices == [torch.device("cpu")] * 2
    assert 0.0 <= result["test_accuracy"] <= 1.0


TUNE = ["compare.tune.trials=2", "compare.tune.epochs=1", "compare.tune.finalists=2", "compare.tune.splits=2",
        "compare.tune.structures=2", "compare.tune.soup=2"]


def test_every_row_is_tuned_alike_and_the_cells_use_the_pick(tmp_path, monkeypatch):
    """compare.tune: one study per task and row with the same trials, epochs and selection; each
    cell retrains with its row's chosen recipe (full fine-tuning's in its config, the others' in
    the tuned subnet file); the search row's candidates are its structures plus the single
    methods; the soup row souping the search pick's recipes; test read once per cell, at its end."""
    from unitune.commands.compare.tuning import TUNE_INFO
    import optuna
    import yaml

    events = load_events(monkeypatch)
    out = tmp_path / "run"
    assert main(["compare", "--config", str(CONFIG), "--quick", "--out", str(out), "--tasks", "location",
                 "--methods", "linear,lora,full,search,soup", "--seeds", "0", "--quiet", *TUNE]) == 0
    test_reads_of_test(events, QUICK_TEST)  # tuning and selection read train and val only
    rows = {r["method"]: r for r in read_csv(out / "results.csv")}
    assert set(rows) == {"linear", "lora", "full", "search", "soup"}
    lora_trials: list = []
    for row in ("linear", "lora", "full", "search"):  # lora's study before the search row's, which imports it
        info = json.loads((out / "tasks/location" / row / TUNE_INFO).read_text())
        result = json.loads(Path(info["tune_result"]).read_text())
        study = optuna.load_study(study_name=result["study"], storage=f"sqlite:///{result['storage']}")
        finished = [t for t in study.trials if t.state.is_finished() and t.state.name != "FAIL"
                    and "imported_from" not in t.user_attrs]
        assert len(finished) == 2, row  # the same number of trials of its own for every row
        # the search row's study starts from the single-method rows' (lora's; not linear's or full's)
        imported = [t for t in study.trials if "imported_from" in t.user_attrs]
        assert info["imported"]["trials"] == len(imported) == (len(lora_trials) if row == "search" else 0), row
        if row == "lora":
            lora_trials = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
        if row == "search":
            assert [(t.params["lr"], t.value) for t in imported] == [(t.params["lr"], t.value) for t in lora_trials]
            assert info["cpu_seconds"] >= sum(t.user_attrs["cpu_seconds"] for t in imported) > 0
            search_info = info
            own = {t.params["structure"] for t in finished}  # its own trials: the structures no single row tuned
            assert own and not own & {t.params["structure"] for t in imported}, own
        assert json.loads(rows[row]["recipe"]) == info["recipe"] == result["recipe"], row
        assert float(rows[row]["tune_cpu_seconds"]) == info["cpu_seconds"] > 0, row
        if row == "full":
            assert info["subnet_file"] is None and set(info["recipe"]["lr_mult"]) == {"head"}
        else:
            meta = yaml.safe_load(Path(info["subnet_file"]).read_text())["meta"]
            assert meta["recipe"] == info["recipe"], row
    labels = json.loads(Path(json.loads((out / "tasks/location/search" / TUNE_INFO).read_text())["tune_result"])
                        .read_text())
    from unitune.commands.compare.run import largest_uniform
    from unitune.commands.compare.tuning import candidates
    from unitune.supernet import Subnet

    plan = compare.plan_compare(CONFIG, out, tasks=["location"], methods=["linear", "lora", "full", "search", "soup"],
                                seeds=[0], quick=True, overrides=TUNE)
    found = candidates(plan, "location", "search")
    contents = [s.to_dict()["subnet"] for _, s in found]
    assert len(contents) == len({repr(c) for c in contents})  # each structure once
    assert found[0][1] == Subnet.load(out / "tasks/location/search/best_subnet.yaml")  # the searched pick first
    lora = largest_uniform("lora", plan.context("location"), plan.classes("location"))
    assert lora.to_dict()["subnet"] in contents  # the single methods too
    study = optuna.load_study(study_name=labels["study"], storage=f"sqlite:///{labels['storage']}")
    assert study.user_attrs["candidates"] == [label for label, _ in found]
    assert {t["structure"] for t in labels["trials"]} <= set(study.user_attrs["candidates"])
    soup = json.loads((out / "tasks/location/soup/seed0/soup/soup_result.json").read_text())
    assert len(soup["members"]) == 2 and soup["members"][0]["recipe"] == labels["recipe"]  # soup: 2 members always
    assert f"soup of {len(soup['chosen'])}" in rows["soup"]["sizes"] and 1 <= len(soup["chosen"]) <= 2
    table = (out / "table.md").read_text()
    assert "Every row tuned alike (compare.tune: 2 trials of up to 1 epoch per task" in table
    assert "the search row's study starts from the single-method rows' trials" in table
    assert f"(of it {search_info['imported']['cpu_seconds']:,.0f} imported, {len(lora_trials)} trials) |" in table
    assert "search minus the per-task best single method" in table and "soup minus the per-task best" in table
    for row in ("linear", "lora", "full", "search"):
        assert f"| location | {row} |" in table


def test_untuned_cells_and_csv_keep_their_old_form(tmp_path):
    """Without compare.tune, a cell has no recipe and results.csv no tuning columns; a cell file
    written before compare.tune existed (no such keys) still reads."""
    from unitune.commands.compare.plan import CellRecord

    old = {"task": "count", "group": "structured", "method": "lora", "seed": 0, "test_accuracy": 0.5,
           "test_images": 32, "params": 4096, "params_with_head": 4226, "epochs": 1, "seconds": 1.0,
           "cpu_seconds": 1.0, "sizes": "lora 4", "stage_seconds": None, "fingerprint": "f"}  # as session 7 wrote them
    record = CellRecord.from_json(dict(old), "old.json")
    assert record.recipe is None and record.tune_cpu_seconds is None
    header = compare_report.results_csv([record.to_json()]).splitlines()[0]
    assert header == ",".join(compare.CSV_COLUMNS)
    tuned = {**record.to_json(), "recipe": '{"lr": 0.01}', "tune_cpu_seconds": 3.0}
    assert compare_report.results_csv([tuned]).splitlines()[0] == header + ",recipe,tune_cpu_seconds"


def test_kfold_enters_the_fingerprint_only_when_set(tmp_path):
    """compare.tune.kfold came after the DINOv2 suite's records: its default keeps their
    fingerprint (so they resume), and k folds make another comparison."""
    def fingerprint(*extra):
        return compare.plan_compare(CONFIG, tmp_path / "run", tasks=["location"], methods=["lora"], quick=True,
                                    overrides=[*TUNE, *extra]).fingerprint

    assert fingerprint() == fingerprint("compare.tune.kfold=false") != fingerprint("compare.tune.kfold=true")


def test_the_soup_row_needs_the_tuned_search(tmp_path, capsys):
    out = tmp_path / "run"
    cases = [
        (["lora,soup"], "the 'soup' row is the search row's greedy soup of tuned recipes"),
        (["lora", "compare.tune.splits=1"], "compare.tune.splits: 1 split has no spread"),
        (["lora", "compare.tune.splits=0", "compare.tune.kfold=true"],
         "compare.tune.kfold: true with splits 0 (the selection off): expected splits >= 2"),
        (["lora", "compare.tune.kfold=5"], "compare.tune.kfold: expected"),
        (["lora", "compare.tune.splits=100000", "compare.tune.kfold=true"],
         "compare.tune.splits: 100000 folds (kfold) of the 48 train+val images of task 'location'; expected at most "
         "one fold per image"),
        (["lora", "compare.tune.ranges={lr: [1, 0.1]}"], "compare.tune.ranges.lr: expected [low, high] with 0 < low < high"),
        (["lora,search", "compare.tune.trials=2", "retrain.init=supernet"],
         "compare.tune tunes every row from the pretrained backbone, but retrain.init: supernet"),
    ]
    for (methods, *overrides), message in cases:
        assert main(["compare", "--config", str(CONFIG), "--quick", "--out", str(out), "--quiet", "--tasks", "location",
                     "--methods", methods, *overrides]) == 2, methods
        assert message in capsys.readouterr().err, message
    assert not out.exists()


def test_the_decision_line_needs_a_positive_mean_two_standard_errors_out():
    def rows(diffs):
        out = []
        for s, d in enumerate(diffs):
            out += [{"task": "t", "method": "lora", "seed": s, "test_accuracy": 0.5},
                    {"task": "t", "method": "search", "seed": s, "test_accuracy": 0.5 + d}]
        return out

    call = lambda diffs: compare_report.paired_vs_best(rows(diffs), ["t"], list(range(len(diffs))),
                                                        ["lora", "search"], "search")
    assert not call([0.0, 0.0, 0.0])["clears_two_se"]  # no difference at all (se 0) is no win
    win = call([0.05, 0.06, 0.04])
    assert win["mean_diff"] == pytest.approx(5.0) and win["se"] == pytest.approx(1 / 3 ** 0.5)
    assert win["clears_two_se"] and win["best"] == {"t": "lora"}
    assert not call([0.05, -0.04, 0.02])["clears_two_se"]
    # against every baseline row: a tuned full fine-tuning row better than the single method is the one to beat
    full = rows([0.05, 0.06, 0.04]) + [{"task": "t", "method": "full", "seed": s, "test_accuracy": 0.58}
                                       for s in range(3)]
    assert compare_report.paired_vs_best(full, ["t"], [0, 1, 2], ["lora", "full", "search"], "search")["best"] == \
        {"t": "lora"}  # the decision rule's own baseline: single methods only
    every = compare_report.paired_vs_best(full, ["t"], [0, 1, 2], ["lora", "full", "search"], "search", every_row=True)
    assert every["best"] == {"t": "full"} and every["mean_diff"] == pytest.approx(-3.0) and not every["clears_two_se"]
    assert "minus the per-task best row (full fine-tuning and the linear probe included) (t: full" in \
        compare_report.format_decision([every])


def test_the_held_out_bar_is_chosen_on_the_other_seeds_test():
    """LoRA wins on all three seeds' mean only through seed 0; judged on seed 0, the bar chosen on
    seeds 1 and 2 is SSF. Checked against the differences worked out by hand."""
    acc = {"lora": [0.60, 0.50, 0.50], "ssf": [0.52, 0.52, 0.52], "search": [0.55, 0.55, 0.55]}
    rows = [{"task": "t", "method": m, "seed": s, "test_accuracy": a} for m, v in acc.items() for s, a in enumerate(v)]
    d = compare_report.paired_vs_best(rows, ["t"], [0, 1, 2], ["lora", "ssf", "search"], "search")
    assert d["best"] == {"t": "lora"} and d["mean_diff"] == pytest.approx((-5 + 5 + 5) / 3)
    held = [0.55 - 0.52, 0.55 - 0.50, 0.55 - 0.50]  # seed 0 against SSF, seeds 1 and 2 against LoRA
    h = d["held_out"]
    assert h["n"] == 3 and h["wins"] == 3
    assert h["mean_diff"] == pytest.approx(100 * statistics.fmean(held))
    assert h["se"] == pytest.approx(100 * statistics.stdev(held) / 3 ** 0.5)
    line = compare_report.format_decision([d])
    assert f"on the other seeds' test (the bar without the luck of a maximum over noisy means): " \
           f"{100 * statistics.fmean(held):+.2f} ± {100 * statistics.stdev(held) / 3 ** 0.5:.2f} (se)." in line
    one = compare_report.paired_vs_best([r for r in rows if r["seed"] == 0], ["t"], [0], ["lora", "ssf", "search"],
                                        "search")
    assert "held_out" not in one and "other seeds" not in compare_report.format_decision([one])


def test_worker_jobs_start_once_what_they_need_is_done(monkeypatch):
    """--jobs N: a tuning waits for its task's search only on the search row; a cell waits for its
    row's tuning (the soup for the search row's); untuned, a search cell waits for the search."""
    import concurrent.futures as cf
    from types import SimpleNamespace

    order: list[tuple] = []

    class Pool:  # runs each job at once, as a worker that is always free would
        def submit(self, fn, job):
            order.append((job[1], *job[2]))
            f = cf.Future()
            f.set_result(None)
            return f

    monkeypatch.setattr(compare_run, "_worker", lambda job: None)
    tasks, methods = ("a", "b"), ("lora", "full", "search", "soup")
    cells = [(t, m, 0) for t in tasks for m in methods]
    tuned = SimpleNamespace(tasks=tasks, methods=methods, tune=SimpleNamespace(warm_start=True))
    tunes = [(t, m) for t in tasks for m in methods if m != "soup"]
    compare_run._run_jobs(tuned, Pool(), list(tasks), tunes, cells, SimpleNamespace(update=lambda: None))
    assert sorted(order) == sorted([("search", t) for t in tasks] + [("tune", *x) for x in tunes] +
                                   [("cell", *c) for c in cells])
    position = {job: i for i, job in enumerate(order)}
    for t in tasks:
        assert position["search", t] < position["tune", t, "search"]
        assert position["tune", t, "lora"] < position["tune", t, "search"]  # warm_start: it imports lora's trials
        for m in methods:
            assert position["tune", t, "search" if m == "soup" else m] < position["cell", t, m, 0]
    first = {("search", t) for t in tasks} | {("tune", t, m) for t in tasks for m in ("lora", "full")}
    assert set(order[:len(first)]) == first  # at once: the searches and the tunings that need none
    untuned = SimpleNamespace(tasks=tasks, methods=("lora", "search"), tune=None)
    order.clear()
    compare_run._run_jobs(untuned, Pool(), list(tasks), [], [(t, m, 0) for t in tasks for m in ("lora", "search")],
                          SimpleNamespace(update=lambda: None))
    position = {job: i for i, job in enumerate(order)}
    assert all(position["search", t] < position["cell", t, "search", 0] for t in tasks)
    assert len(order) == 6
