"""Which supernet sampler should be the default? A comparison of the samplers' search outcomes on
validation evidence only (issue 15), on the mini-VTAB suite's finished runs.

    python benchmarks/bench_sampler_val.py --runs uniform=runs/minivtab_full \
        --runs sandwich=runs/minivtab_sandwich --runs budget=runs/minivtab_budget \
        --singles lora,ssf --seeds 0,1,2 --workdir /tmp/valsampler/work

Protocol. Each ``--runs NAME=FOLDER`` is a finished ``unitune compare`` folder whose searches
used ``supernet.sampler=NAME``; its pick per task is ``tasks/<task>/search/best_subnet.yaml``.
The single methods (``--singles``) are the subnets the suite ran for them
(``tasks/<task>/<method>/seed0/subnet.yaml`` of the first folder). Every pick was selected on the
task's 200 val images (inherited val, then the re-rank's stand-alone val), so scoring them on
those images again is biased by the selection. Instead each row is scored on a **fresh val set**:
val items ``k = 200 .. 200 + fresh - 1``, which ``unitune.data.minivtab`` renders from
``(data.seed, task, "val", k)`` and the search never saw. Items that reuse a source the first 200
used are dropped (digits cycle a fixed pool of val scans; terrain tiles are drawn from a narrow
strip of the map, so an identical tile origin can recur); what is kept, and how much the kept
terrain tiles still overlap the first 200's area, is printed. Each cell retrains the row's
subnet with the suite's retrain recipe (the config's ``retrain:``, from the pretrained backbone,
seed ``s``) through ``unitune.retrain.train.retrain``, the function ``unitune compare``'s cells
call, on the **train** split only (800 images; not trainval, whose val part chose the picks), and
scores the fresh val set once after the last epoch. The test split is never built: the script
makes constructing any minivtab split other than ``train`` and ``val`` raise (``forbid_splits``).

Decision rule, fixed before any result was read: switch the default to ``sandwich`` iff
(1) the mean of the paired fresh-val differences sandwich - uniform over tasks x seeds exceeds
2 standard errors of that mean (std / sqrt(pairs)), and (2) sandwich's per-task mean is higher on
at least 4 of the 6 tasks (one search per task and sampler: the seeds only vary the retraining,
so the 18 pairs are not 18 independent searches and one task must not carry the result).
Otherwise ``uniform`` (NOAH's, cheaper to train) stays. ``budget`` is reported against the same
rule but is not a candidate for the default here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from unitune.data.minivtab import SPLIT_SIZES, TASKS, MiniVtabDataset

ALLOWED_SPLITS = ("train", "val")


@contextlib.contextmanager
def forbid_splits(allowed=ALLOWED_SPLITS):
    """Make building any minivtab split but ``allowed`` raise: the test split cannot be read."""
    real = MiniVtabDataset.__init__

    def init(self, task, split, *args, **kwargs):
        if split not in allowed:
            raise RuntimeError(f"bench_sampler_val: the {split!r} split of {task!r} is off limits "
                               f"(only {list(allowed)} may be built)")
        real(self, task, split, *args, **kwargs)

    MiniVtabDataset.__init__ = init
    try:
        yield
    finally:
        MiniVtabDataset.__init__ = real


# ------------------------------------------------------------------------------ the fresh val set

def _sizes(run) -> tuple[int, int, int]:
    return tuple(run.data.split_sizes or SPLIT_SIZES)


def _terrain_origin(seed: int, k: int, label: int) -> tuple[int, int]:
    """The map origin of val tile ``k``: the first draw of its item RNG, as ``minivtab._terrain`` makes it."""
    from unitune.data.minivtab import _dem

    candidates = _dem()[1]["val"][label]
    rng = np.random.default_rng([seed, TASKS.index("terrain"), 1, k])
    y0, x0 = candidates[rng.integers(len(candidates))]
    return int(y0), int(x0)


def fresh_items(run, fresh: int) -> tuple[list[int], dict]:
    """Val item indices ``n_val .. n_val + fresh - 1`` that reuse no source of items ``0 .. n_val - 1``,
    and what was found (reused, kept, distinct sources, terrain area overlap)."""
    task, seed = run.data.task, run.data.seed
    n_val = _sizes(run)[1]
    candidates = list(range(n_val, n_val + fresh))
    info = {"task": task, "candidates": fresh}
    if task == "digits":
        from unitune.data.minivtab import _digit_index, _digit_pools

        seen = {_digit_index("val", k) for k in range(n_val)}
        scans = {k: _digit_index("val", k) for k in candidates}
        keep = [k for k in candidates if scans[k] not in seen]
        train_pool = set(int(i) for i in _digit_pools()[2]["train"])
        assert not train_pool & set(scans.values()), "a val scan is in the train pool"
        info.update(reused=fresh - len(keep), distinct_sources=len({scans[k] for k in keep}),
                    note=f"val pool of {len(_digit_pools()[2]['val'])} scans")
    elif task == "terrain":
        from unitune.data.minivtab import _TILE, _dem

        n_classes = 4
        origins = {k: _terrain_origin(seed, k, k % n_classes) for k in range(n_val + fresh)}
        seen = {origins[k] for k in range(n_val)}
        keep = [k for k in candidates if origins[k] not in seen]
        covered = np.zeros(_dem()[0].shape, dtype=bool)
        for y0, x0 in seen:
            covered[y0:y0 + _TILE, x0:x0 + _TILE] = True
        overlap = [covered[origins[k][0]:origins[k][0] + _TILE, origins[k][1]:origins[k][1] + _TILE].mean()
                   for k in keep]
        info.update(reused=fresh - len(keep), distinct_sources=len({origins[k] for k in keep}),
                    area_overlap=float(np.mean(overlap)) if overlap else None,
                    note="tiles of the val strip; overlap = share of a kept tile's map cells inside the first items' tiles")
    else:  # rendered from (data.seed, task, split, k): a new k is a new scene
        keep = candidates
        info.update(reused=0, distinct_sources=len(keep), note="generated from a new item key")
    info["kept"] = len(keep)
    return keep, info


def fresh_val_dataset(run, keep: list[int], transform=None):
    import dataclasses

    from unitune.data import build_dataset

    n_train, n_val, n_test = _sizes(run)
    data = dataclasses.replace(run.data, split_sizes=(n_train, max(keep) + 1, n_test))
    full = build_dataset(data, "val", None)
    ds = full.subset(keep, name=f"minivtab {run.data.task} [fresh val {len(keep)}]")
    ds.transform = transform
    return ds


@contextlib.contextmanager
def train_and_fresh_val(keep: list[int]):
    """``retrain`` builds ``trainval`` and ``test``: give it ``train`` and the fresh val set instead."""
    import unitune.retrain.train as rt

    real = rt.build_dataset

    def build(cfg, split, transform=None):
        from types import SimpleNamespace

        if split == "trainval":
            return real(cfg, "train", transform)
        if split == "test":
            return fresh_val_dataset(SimpleNamespace(data=cfg), keep, transform)
        raise RuntimeError(f"bench_sampler_val: retrain asked for split {split!r}")

    rt.build_dataset = build
    try:
        yield
    finally:
        rt.build_dataset = real


# ---------------------------------------------------------------------------------- the cells

def row_subnets(runs: dict[str, Path], singles: list[str], task: str) -> dict[str, Path]:
    first = next(iter(runs.values()))
    rows = {name: folder / "tasks" / task / "search" / "best_subnet.yaml" for name, folder in runs.items()}
    rows.update({m: first / "tasks" / task / m / "seed0" / "subnet.yaml" for m in singles})
    for name, path in rows.items():
        if not path.is_file():
            sys.exit(f"bench_sampler_val: {path}: missing (row {name!r}, task {task!r})")
    return rows


def run_cell(run, row: str, subnet_file: Path, seed: int, keep: list[int], out: Path) -> dict:
    import dataclasses

    from unitune.commands.compare import describe
    from unitune.retrain.train import retrain
    from unitune.supernet import Subnet

    run = dataclasses.replace(run, retrain=dataclasses.replace(run.retrain, seed=seed),
                              raw={**run.raw, "retrain": {**run.raw.get("retrain", {}), "seed": seed}})
    if out.exists():  # an interrupted cell starts over (its JSON is written only when complete)
        shutil.rmtree(out)
    out.mkdir(parents=True)
    started, cpu = time.perf_counter(), time.process_time()
    with train_and_fresh_val(keep):
        r = retrain(run, subnet_file, out, progress=False)
    return {"task": run.data.task, "row": row, "seed": seed, "fresh_val_accuracy": r["test_accuracy"],
            "fresh_val_images": r["test_images"], "params": r["params"]["trainable_params"],
            "subnet": describe(Subnet.load(subnet_file)), "subnet_file": str(subnet_file),
            "epochs": run.retrain.epochs, "seconds": round(time.perf_counter() - started, 1),
            "cpu_seconds": round(time.process_time() - cpu, 1)}


# ---------------------------------------------------------------------------------- the report

def _ms(values) -> str:
    values = list(values)
    return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.1f}"


def paired(acc: dict, a: str, b, tasks, seeds) -> dict | None:
    """``a`` minus ``b`` (a row name, or a function (task, seed) -> accuracy), paired by task and seed."""
    get_b = b if callable(b) else (lambda t, s: acc.get((t, b, s)))
    pairs = [(t, s) for t in tasks for s in seeds if acc.get((t, a, s)) is not None and get_b(t, s) is not None]
    if len(pairs) < 2:
        return None
    diffs = [acc[t, a, s] - get_b(t, s) for t, s in pairs]
    sd = statistics.stdev(diffs)
    per_task = {t: statistics.fmean(acc[t, a, s] - get_b(t, s) for s in seeds if (t, s) in pairs)
                for t in tasks if any((t, s) in pairs for s in seeds)}
    return {"mean": statistics.fmean(diffs), "std": sd, "n": len(diffs), "wins": sum(d > 0 for d in diffs),
            "ties": sum(d == 0 for d in diffs), "se": sd / len(diffs) ** 0.5, "per_task": per_task,
            "tasks_won": sum(v > 0 for v in per_task.values())}


def _pair_line(label: str, p: dict | None) -> str:
    if p is None:
        return f"| {label} | (too few pairs) |"
    tasks = " | ".join(f"{v:+.1f}" for v in p["per_task"].values())
    return (f"| {label} | {p['mean']:+.2f} ± {p['std']:.2f} | {p['wins']}/{p['n']} (ties {p['ties']}) | "
            f"{p['se']:.2f} | {p['mean'] / p['se'] if p['se'] else float('nan'):+.1f} | {p['tasks_won']}/{len(p['per_task'])} | {tasks} |")


def report(cells: list[dict], searches: list[str], singles: list[str], tasks, seeds, fresh_info: dict) -> str:
    acc = {(c["task"], c["row"], c["seed"]): 100 * c["fresh_val_accuracy"] for c in cells}
    rows = [*searches, *singles]
    lines = ["Fresh val sets (val items never seen by the search; reused sources dropped):", "",
             "| task | candidates | reused (dropped) | kept | distinct sources | note |", "|---|---|---|---|---|---|"]
    for t in tasks:
        i = fresh_info[t]
        extra = f"; area overlap {100 * i['area_overlap']:.0f}%" if i.get("area_overlap") is not None else ""
        lines.append(f"| {t} | {i['candidates']} | {i['reused']} | {i['kept']} | {i['distinct_sources']} | {i['note']}{extra} |")
    lines += ["", "Fresh-val accuracy %, mean ± std over seeds (retrained on train, scored once after the last epoch):", "",
              "| row | " + " | ".join(tasks) + " | mean over tasks × seeds |", "|" + "---|" * (len(tasks) + 2)]
    for r in rows:
        cellv = []
        for t in tasks:
            v = [acc[t, r, s] for s in seeds if (t, r, s) in acc]
            cellv.append(_ms(v) if v else "-")
        allv = [acc[t, r, s] for t in tasks for s in seeds if (t, r, s) in acc]
        lines.append(f"| {r} | " + " | ".join(cellv) + (f" | {statistics.fmean(allv):.2f} |" if allv else " | - |"))
    head = ("| pair | mean ± std | pairs won | s.e. | mean / s.e. | tasks won | " + " | ".join(tasks) + " |")
    lines += ["", "Paired differences (fresh-val points; per task: the mean over seeds):", "", head,
              "|" + "---|" * (6 + len(tasks))]
    base = searches[0]
    for s in searches[1:]:
        lines.append(_pair_line(f"{s} - {base}", paired(acc, s, base, tasks, seeds)))
    # the best single method: per task, the single row with the higher fresh-val mean (chosen on
    # the same fresh val: it favours the baseline, never the search)
    best = {}
    for t in tasks:
        means = {m: statistics.fmean(acc[t, m, s] for s in seeds) for m in singles
                 if all((t, m, s) in acc for s in seeds)}
        if means:
            best[t] = max(means, key=means.get)
    for s in searches:
        for m in singles:
            lines.append(_pair_line(f"{s} - {m}", paired(acc, s, m, tasks, seeds)))
        if best:
            lines.append(_pair_line(f"{s} - best single per task", paired(
                acc, s, lambda t, sd: acc.get((t, best[t], sd)) if t in best else None, tasks, seeds)))
    if best:
        lines.append("")
        lines.append("Best single per task (on fresh val): " + ", ".join(f"{t} {m}" for t, m in best.items()))
    # every pair, task x seed
    columns = [(t, s) for t in tasks for s in seeds]
    lines += ["", "The same differences by task and seed:", "",
              "| pair | " + " | ".join(f"{t} s{s}" for t, s in columns) + " |", "|" + "---|" * (len(columns) + 1)]
    others = [(f"{s} - {base}", s, lambda t, sd: acc.get((t, base, sd))) for s in searches[1:]]
    others += [(f"{s} - best single", s, lambda t, sd: acc.get((t, best[t], sd)) if t in best else None)
               for s in searches]
    for label, a, get_b in others:
        vals = [acc[t, a, sd] - get_b(t, sd) if (t, a, sd) in acc and get_b(t, sd) is not None else None
                for t, sd in columns]
        lines.append(f"| {label} | " + " | ".join("-" if v is None else f"{v:+.1f}" for v in vals) + " |")
    if "sandwich" in searches and base == "uniform":
        p = paired(acc, "sandwich", "uniform", tasks, seeds)
        complete = p is not None and p["n"] == len(tasks) * len(seeds)
        if p is not None:
            switch = p["mean"] > 2 * p["se"] and p["tasks_won"] >= 4
            lines += ["", f"Decision rule (docstring): sandwich - uniform {p['mean']:+.2f} vs 2 s.e. = {2 * p['se']:.2f}; "
                      f"tasks won {p['tasks_won']}/{len(p['per_task'])} (needs 4) -> "
                      f"{'SWITCH to sandwich' if switch else 'KEEP uniform'}"
                      + ("" if complete else f" (INCOMPLETE: {p['n']} of {len(tasks) * len(seeds)} pairs)")]
        # a sensitivity check, not the rule: without the tasks whose fresh items share source area
        # with the first val items (terrain: the val strip is narrow)
        shared = [t for t in tasks if (fresh_info[t].get("area_overlap") or 0) > 0.5]
        q = paired(acc, "sandwich", "uniform", [t for t in tasks if t not in shared], seeds) if shared else None
        if q is not None:
            lines.append(f"Without {', '.join(shared)} (fresh items overlap the first val items' area): "
                         f"sandwich - uniform {q['mean']:+.2f} ± {q['std']:.2f}, s.e. {q['se']:.2f}, "
                         f"{q['wins']}/{q['n']} pairs, tasks won {q['tasks_won']}/{len(q['per_task'])}")
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", action="append", required=True, metavar="NAME=FOLDER",
                    help="a finished compare folder whose searches used supernet.sampler=NAME (first: the baseline)")
    ap.add_argument("--singles", default="lora,ssf", help="single-method rows, from the first folder")
    ap.add_argument("--tasks", default=None, help="default: every task of the first folder")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--fresh", type=int, default=400, help="fresh val items to draw (k = n_val .. n_val + fresh - 1)")
    ap.add_argument("--workdir", required=True, help="cells (JSON) and retrain folders go here")
    ap.add_argument("--only", default=None, help="rows to run now (default: all); the report reads every finished cell")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)

    import torch

    from unitune.engine.config import load_run_config
    from unitune.io import write_json_atomic

    torch.set_num_threads(args.threads)
    runs = {}
    for item in args.runs:
        name, _, folder = item.partition("=")
        if not name or not folder or not Path(folder).is_dir():
            sys.exit(f"bench_sampler_val: --runs {item!r}: expected NAME=FOLDER of a finished compare run")
        runs[name] = Path(folder)
    first = next(iter(runs.values()))
    singles = [m for m in args.singles.split(",") if m]
    tasks = args.tasks.split(",") if args.tasks else [t for t in TASKS if (first / "tasks" / t / "config.yaml").is_file()]
    seeds = [int(s) for s in args.seeds.split(",")]
    only = set(args.only.split(",")) if args.only else None
    work = Path(args.workdir)

    cells, fresh_info = [], {}
    with forbid_splits():
        for t in tasks:  # the config as the suite ran the task (sampler aside, identical in every folder)
            run = load_run_config(first / "tasks" / t / "config.yaml")
            if run.data.source != "minivtab":
                sys.exit(f"bench_sampler_val: {first}/tasks/{t}/config.yaml: data.source must be minivtab")
            keep, fresh_info[t] = fresh_items(run, args.fresh)
        print(json.dumps(fresh_info), flush=True)
        for seed in seeds:
            for t in tasks:
                run = load_run_config(first / "tasks" / t / "config.yaml")
                keep, _ = fresh_items(run, args.fresh)
                for row, subnet_file in row_subnets(runs, singles, t).items():
                    path = work / "cells" / t / f"{row}-seed{seed}.json"
                    if path.is_file():
                        cells.append(json.loads(path.read_text()))
                        continue
                    if args.report_only or (only is not None and row not in only):
                        continue
                    cell = run_cell(run, row, subnet_file, seed, keep, work / "tasks" / t / row / f"seed{seed}")
                    write_json_atomic(path, cell)
                    cells.append(cell)
                    print(f"{time.strftime('%H:%M:%S', time.gmtime())} {t} {row} seed {seed}: fresh val "
                          f"{100 * cell['fresh_val_accuracy']:.2f}% ({cell['fresh_val_images']} images, "
                          f"{cell['cpu_seconds']} CPU-s) {cell['subnet']}", flush=True)
    print()
    print(report(cells, list(runs), singles, tasks, seeds, fresh_info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
