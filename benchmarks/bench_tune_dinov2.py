"""Does tuning the recipe move a single PEFT method on the DINOv2 suite? `unitune tune` against the
suite's one fixed recipe (lr 1e-3, weight decay 1e-4), same row, same seeds, same test split.

For each (task, method): the compare row's subnet (`largest_uniform`, as `unitune compare` builds
it; `full`: full fine-tuning, its head's multiplier tuned too), tuned with `search.tune.tune` (TPE + successive halving, ``--trials`` trials of up to
``--epochs`` epochs, each trained on **train** and judged on **val**), then retrained on trainval
with the chosen recipe for seeds 0-2, test read once per cell after the last epoch. The fixed-recipe
cells are the suite's own records (benchmarks/logs/minivtab-dinov2/cells), run with the same
config, splits and seeds.

Decision rule, written before the run: per (task, method), tuned minus fixed test accuracy, paired by
seed; the tuned recipe "helps" where the mean paired difference exceeds two standard errors of that
mean (sd / sqrt(n)), "hurts" where it is below minus two, else "no measurable difference". Tuning
cost (CPU-seconds of the tune stage) is reported beside it. Nothing is selected on test.

    OMP_NUM_THREADS=1 python benchmarks/bench_tune_dinov2.py --tasks count --methods vpt,lora \\
        --out runs/bench-tune-dinov2      # needs weights/dinov2_vits14.safetensors (unitune fetch-weights)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "minivtab-dinov2.yaml"
FIXED = REPO / "benchmarks" / "logs" / "minivtab-dinov2" / "cells"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="count")
    parser.add_argument("--methods", default="vpt,lora")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", default="runs/bench-tune-dinov2")
    args = parser.parse_args()

    import torch

    from unitune.commands.compare.plan import plan_compare
    from unitune.commands.compare.run import largest_uniform
    from unitune.retrain.train import retrain
    from unitune.engine.config import apply_recipe
    from unitune.search.tune import FULL, tune

    torch.set_num_threads(1)
    tasks, methods = args.tasks.split(","), args.methods.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    plan = plan_compare(CONFIG, out / "plan", tasks=tasks, seeds=seeds, methods=methods)
    rows = []
    for task in tasks:
        ctx = plan.context(task)
        for method in methods:
            folder = out / task / method
            candidate = (FULL, None) if method == "full" else (method, largest_uniform(method, ctx, plan.classes(task)))
            cpu = time.process_time()
            tuned = tune(ctx.moved(folder, ctx.run), [candidate], folder, trials=args.trials,
                         epochs=args.epochs, seed=0)
            tune_cpu = time.process_time() - cpu
            pruned = sum(t["state"] == "PRUNED" for t in tuned["trials"])
            for seed in seeds:
                run = dataclasses.replace(ctx.run, retrain=dataclasses.replace(ctx.run.retrain, seed=seed))
                cell = folder / f"seed{seed}"
                result_file = cell / "retrain_result.json"
                if result_file.exists():
                    result = json.loads(result_file.read_text())
                elif method == "full":  # no subnet file: the recipe goes in the config
                    run = dataclasses.replace(run, retrain=apply_recipe(run.retrain, tuned["recipe"], "tune"))
                    result = retrain(ctx.moved(cell, run), None, cell, full=True, progress=False, curves=False)
                else:
                    result = retrain(ctx.moved(cell, run), tuned["subnet_file"], cell, progress=False, curves=False)
                fixed = json.loads((FIXED / task / f"{method}-seed{seed}.json").read_text())["test_accuracy"]
                rows.append({"task": task, "method": method, "seed": seed, "tuned": result["test_accuracy"],
                             "fixed": fixed, "recipe": tuned["recipe"], "tune_val": tuned["val_accuracy"],
                             "tune_cpu": tune_cpu, "pruned": pruned})
            print(f"{task} {method}: recipe {tuned['recipe']}, tune val {tuned['val_accuracy']:.4f}, "
                  f"{pruned}/{args.trials} pruned, tune {tune_cpu:.0f} CPU-s", flush=True)
    report(rows)


def report(rows: list[dict]) -> None:
    print("\n| task | method | fixed recipe (test %) | tuned (test %) | tuned - fixed, mean ± se (n) | verdict | "
          "chosen recipe | tune CPU-s |")
    print("|---|---|---|---|---|---|---|---|")
    keys = list(dict.fromkeys((r["task"], r["method"]) for r in rows))
    for task, method in keys:
        rs = [r for r in rows if (r["task"], r["method"]) == (task, method)]
        diffs = [100 * (r["tuned"] - r["fixed"]) for r in rs]
        mean = statistics.fmean(diffs)
        se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
        verdict = "helps" if mean > 2 * se else "hurts" if mean < -2 * se else "no measurable difference"
        fixed = statistics.fmean(100 * r["fixed"] for r in rs)
        tuned = statistics.fmean(100 * r["tuned"] for r in rs)
        recipe = ", ".join(f"{k} {v:.2g}" for k, v in rs[0]["recipe"].items() if isinstance(v, float))
        print(f"| {task} | {method} | {fixed:.1f} | {tuned:.1f} | {mean:+.1f} ± {se:.1f} ({len(diffs)}) | {verdict} | "
              f"{recipe} | {rs[0]['tune_cpu']:.0f} |")


if __name__ == "__main__":
    main()
