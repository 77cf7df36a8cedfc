"""What each part of the tuned comparison contributes, one switched off at a time (issue 23).

Reads a finished `unitune compare` run with compare.tune (benchmarks/tune_suite.sh) and:

- **selection off**: for every tuned (task, row) whose noise-aware pick differs from the study's
  own best trial, retrains that best trial's recipe (and structure) per seed exactly as the cell
  did, and scores it on test once; where the two agree the cell stands for both (difference 0);
- **soup off**: the soup row minus the search row, paired by task and seed (the same run);
- **learning rates off**: with ``--untuned DIR`` (the same config, tasks and seeds without
  compare.tune; make it cheaply by copying ``pretrain/`` and ``tasks/*/search/`` of the tuned run
  into DIR first, so that both share the backbone and the searched structures), each row tuned
  minus untuned, paired.

Every figure is test accuracy in points, paired over task x seed, mean ± standard error
(std / sqrt(n)); nothing here selects anything.

    python benchmarks/bench_tune_ablation.py --run runs/tune-suite-tiny --config configs/minivtab.yaml \\
        --tasks digits,terrain,count [--untuned runs/tune-suite-tiny-untuned] [compare.tune overrides ...]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from pathlib import Path

TUNE = ["compare.tune.trials=8", "compare.tune.epochs=3", "compare.tune.finalists=3", "compare.tune.splits=3",
        "compare.tune.structures=3", "compare.tune.soup=3"]  # benchmarks/tune_suite.sh's


def mean_se(values: list[float]) -> str:
    if not values:
        return "-"
    m = statistics.fmean(values)
    if len(values) < 2:
        return f"{m:+.2f} (n=1)"
    return f"{m:+.2f} ± {statistics.stdev(values) / math.sqrt(len(values)):.2f} (n={len(values)})"


def read_rows(folder: Path) -> dict[tuple[str, str, int], float]:
    """Test accuracy (points) per (task, row, seed): the cell files (every task the folder holds;
    results.csv has only the last `compare` call's), or results.csv where there are none."""
    cells = [json.loads(p.read_text()) for p in sorted(folder.glob("cells/*/*.json"))]
    if cells:
        return {(c["task"], c["method"], c["seed"]): 100 * c["test_accuracy"] for c in cells}
    with open(folder / "results.csv", newline="") as f:
        return {(r["task"], r["method"], int(r["seed"])): 100 * float(r["test_accuracy"]) for r in csv.DictReader(f)}


def study_best(result: dict) -> dict:
    done = [t for t in result["trials"] if t["state"] == "COMPLETE" and t.get("value") is not None
            and math.isfinite(t["value"])]
    return min(done, key=lambda t: (-t["value"], t["number"]))


def retrain_recipe(plan, task: str, row: str, seed: int, structure: str, recipe: dict, out: Path) -> float:
    """Test accuracy (points) of ``row``'s cell retrained with ``structure`` and ``recipe``."""
    from unitune.commands.compare.run import cell_run, full_finetune
    from unitune.commands.compare.tuning import candidates
    from unitune.retrain.train import retrain

    result_file = out / "retrain_result.json"
    if result_file.is_file():  # resumable: a finished one is read back
        return 100 * json.loads(result_file.read_text())["test_accuracy"]
    out.mkdir(parents=True, exist_ok=True)
    if row == "full":  # as run_cell does: full fine-tuning's recipe in its config
        ctx = plan.context(task).moved(out, cell_run(plan, task, seed, recipe))
        return 100 * full_finetune(ctx, out)["test_accuracy"]
    run = cell_run(plan, task, seed)
    ctx = plan.context(task).moved(out, run)
    subnet = dict(candidates(plan, task, row))[structure]
    path = subnet.save(out / "subnet.yaml", {"recipe": recipe})
    return 100 * retrain(ctx, path, out, progress=False, curves=False)["test_accuracy"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, type=Path)
    p.add_argument("--config", required=True)
    p.add_argument("--tasks", required=True)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--methods", default="linear,lora,adapter,vpt,ssf,full,search,soup")
    p.add_argument("--untuned", type=Path)
    p.add_argument("--retrain-only", action="store_true",
                   help="only train the selection-off cells (resumable), e.g. while the run's own cells still train")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()

    import torch

    from unitune.commands.compare import plan_compare
    from unitune.commands.compare.tuning import TUNED_ROWS_SKIP, read_tune_info

    torch.set_num_threads(1)
    tasks, seeds = args.tasks.split(","), [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",")
    plan = plan_compare(args.config, args.run, tasks=tasks, seeds=seeds, methods=methods,
                        overrides=[*TUNE, *args.overrides])
    cells = read_rows(args.run)
    rows = [m for m in methods if m not in TUNED_ROWS_SKIP]

    print("## Selection off: the study's best trial instead of the noise-aware pick (test points, best - pick)\n")
    print("| task | row | pick (trial) | study best (trial) | per seed: pick / best |")
    print("|---|---|---|---|---|")
    diffs: dict[str, list[float]] = {m: [] for m in rows}
    for task in tasks:
        for row in rows:
            info = read_tune_info(plan, task, row)
            result = json.loads(Path(info["tune_result"]).read_text())
            best = study_best(result)
            same = best["number"] == result["trial"]
            if args.retrain_only:
                for seed in seeds if not same else ():
                    retrain_recipe(plan, task, row, seed, best["structure"], best["recipe"],
                                   args.run / "ablation" / "selection_off" / task / row / f"seed{seed}")
                continue
            pairs = []
            for seed in seeds:
                picked = cells[task, row, seed]
                other = picked if same else retrain_recipe(
                    plan, task, row, seed, best["structure"], best["recipe"],
                    args.run / "ablation" / "selection_off" / task / row / f"seed{seed}")
                diffs[row].append(other - picked)
                pairs.append(f"{picked:.1f} / {other:.1f}")
            print(f"| {task} | {row} | {result['trial']} ({result['structure']}) | "
                  f"{'same' if same else str(best['number']) + ' (' + best['structure'] + ')'} | {'; '.join(pairs)} |")
            sys.stdout.flush()
    if args.retrain_only:
        return 0
    print()
    for row in rows:
        print(f"- {row}: study best - pick {mean_se(diffs[row])}")
    print(f"- all rows: {mean_se([d for v in diffs.values() for d in v])}\n")

    if "soup" in methods and "search" in methods:
        d = [cells[t, "soup", s] - cells[t, "search", s] for t in tasks for s in seeds]
        print(f"## Soup off: soup - search (test points) {mean_se(d)}\n")

    if args.untuned is not None:
        untuned = read_rows(args.untuned)
        print("## Learning rates off: tuned - untuned (the config's one recipe), test points\n")
        for row in rows:
            d = [cells[t, row, s] - untuned[t, row, s] for t in tasks for s in seeds if (t, row, s) in untuned]
            print(f"- {row}: {mean_se(d)}")
        singles = [m for m in rows if m not in ("linear", "full", "search")]
        for who, table in (("tuned", cells), ("untuned", untuned)):
            best = {t: max(singles, key=lambda m: statistics.fmean(table[t, m, s] for s in seeds)) for t in tasks}
            d = [table[t, "search", s] - table[t, best[t], s] for t in tasks for s in seeds]
            print(f"- {who}: search - per-task best single method {mean_se(d)} (best: {best})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
