"""Two tuned `unitune compare` runs that differ in the tuner (e.g. its pruner), row by row, paired by seed.

For each (task, row) present in both runs: each run's study (complete / pruned trials), its pick
(trial, learning rate), its tuning CPU-seconds, and the test accuracy of its cells per seed; then
B minus A, paired by task and seed (mean ± standard error), per row and pooled. Reads the runs'
records only (cells or results.csv, tune_info.json, tune_result.json); trains nothing.

    python benchmarks/compare_tune_runs.py runs/tune-suite-dinov2 runs/tune-suite-dinov2-median \\
        --tasks count --rows lora,adapter,full
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench_tune_ablation import mean_se, read_rows


def study(run: Path, task: str, row: str) -> dict:
    info = json.loads((run / "tasks" / task / row / "tune_info.json").read_text())
    result = json.loads((run / "tasks" / task / row / "tune" / "tune_result.json").read_text())
    states = [t["state"] for t in result["trials"]]
    return {"complete": states.count("COMPLETE"), "pruned": states.count("PRUNED"), "trial": result["trial"],
            "lr": result["recipe"]["lr"], "cpu": info["cpu_seconds"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--tasks", required=True)
    p.add_argument("--rows", required=True)
    p.add_argument("--seeds", default="0,1,2")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    cells = {run: read_rows(run) for run in (args.a, args.b)}
    print(f"A = {args.a}, B = {args.b}; test accuracy %, per seed {seeds}\n")
    print("| task | row | A: complete/pruned, pick (lr), tune CPU-s | B: complete/pruned, pick (lr), tune CPU-s "
          "| A per seed | B per seed | B - A, mean ± se |")
    print("|---|---|---|---|---|---|---|")
    pooled = []
    for task in args.tasks.split(","):
        for row in args.rows.split(","):
            if not all((run / "tasks" / task / row / "tune_info.json").is_file() for run in (args.a, args.b)):
                print(f"| {task} | {row} | - | - | - | - | not tuned in both runs |")
                continue
            s = {run: study(run, task, row) for run in (args.a, args.b)}
            acc = {run: [cells[run].get((task, row, seed)) for seed in seeds] for run in (args.a, args.b)}
            d = [b - a for a, b in zip(acc[args.a], acc[args.b]) if a is not None and b is not None]
            pooled += d

            def what(run):
                x = s[run]
                return f"{x['complete']}/{x['pruned']}, trial {x['trial']} ({x['lr']:.2g}), {x['cpu']:.0f}"

            def per_seed(run):
                return " / ".join("-" if a is None else f"{a:.1f}" for a in acc[run])

            print(f"| {task} | {row} | {what(args.a)} | {what(args.b)} | {per_seed(args.a)} | {per_seed(args.b)} | "
                  f"{mean_se(d)} |")
    print(f"\npooled B - A: {mean_se(pooled)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
