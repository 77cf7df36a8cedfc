"""Does the choice among the single methods on val follow test once the selection trains as long as the retrain? (issue 23)

The search row of a tuned comparison chooses among the single rows' picks (and its own mixes) by
the selection rule: each finalist trained again on the tuner's repeated train/val splits of
train+val, **for the study's epochs** (compare.tune.epochs, 3), and the best mean wins. The cells
then retrain the pick for the retrain's epochs (4 on the DINOv2 suite) on trainval. On the DINOv2
suite's `orientation` the rule put LoRA (0.833) 4.5 points over SSF (0.788); on test SSF led by 2.3
(RESULTS). This script re-scores every single PEFT row's pick on **the same splits** (the tune
seed's) for ``--epochs`` (default: the retrain's) and prints, per task, each row's selection mean
at the study's epochs (as stored), at ``--epochs``, and its test accuracy (the run's cells, read,
never selected on), and which row each rule would choose among them. Nothing here reads test to
choose; test is printed beside the choices only. Resumable: each score is a JSON file under
``RUN/ablation/select_fidelity/``.

``--kfold K`` re-scores the picks on the K folds of train+val instead (the selection's k-fold
rule, compare.tune.kfold; with ``--epochs 3``, the study's, the partition is the only change):
does judging every train+val image once choose the test winner where 3 random splits did not?

    python benchmarks/bench_select_fidelity.py --run runs/tune-suite-dinov2 --config configs/minivtab-dinov2.yaml \\
        --tasks orientation,count [--epochs 4] [--kfold 5] [--rows lora,adapter,vpt,ssf]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

from bench_tune_ablation import TUNE, read_rows


def score(plan, task: str, info: dict, epochs: int, split, k: int, out: Path) -> dict:
    """The val accuracy of ``info``'s pick trained on split ``k`` for ``epochs`` (cached in ``out``)."""
    from unitune.commands.compare.tuning import candidates
    from unitune.io import write_json_atomic
    from unitune.search.trial import trial_epochs

    path = out / f"split{k}.json"
    if path.is_file():
        return json.loads(path.read_text())
    out.mkdir(parents=True, exist_ok=True)
    label = info["structure"]
    subnet = dict(candidates(plan, task, info["row"]))[label]
    cpu = time.process_time()
    curve = [accuracy for _, accuracy in trial_epochs(plan.context(task).moved(out), subnet, info["recipe"], epochs,
                                                      source=label, split=split)]
    result = {"split": k, "epochs": epochs, "curve": curve, "accuracy": curve[-1],
              "cpu_seconds": round(time.process_time() - cpu, 1)}
    write_json_atomic(path, result)
    return result


def mean_se(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, type=Path)
    p.add_argument("--config", required=True)
    p.add_argument("--tasks", required=True)
    p.add_argument("--rows", default="lora,adapter,vpt,ssf", help="the single rows the search row chooses among")
    p.add_argument("--seeds", default="0,1,2", help="the cells' seeds (test accuracy, printed only)")
    p.add_argument("--epochs", type=int, help="the selection's epochs here (default: the retrain's)")
    p.add_argument("--kfold", type=int, help="score on this many folds of train+val instead of the tuner's splits")
    args = p.parse_args()

    import torch

    from unitune.commands.compare import plan_compare
    from unitune.commands.compare.tuning import read_tune_info
    from unitune.data import build_dataset, fold_splits, repeated_splits

    torch.set_num_threads(1)
    tasks, rows, seeds = args.tasks.split(","), args.rows.split(","), [int(s) for s in args.seeds.split(",")]
    plan = plan_compare(args.config, args.run, tasks=tasks, seeds=seeds, methods=rows, overrides=TUNE)
    cells = read_rows(args.run)
    epochs = args.epochs or plan.base.retrain.epochs
    here = f"{epochs} ep" + (f", {args.kfold} folds" if args.kfold else "")
    print(f"## The single rows' picks on the selection's splits: {plan.tune.epochs} epochs on {plan.tune.splits} random "
          f"splits (stored) against {epochs} epochs on "
          f"{f'{args.kfold} folds of train+val' if args.kfold else 'the same splits'} (the retrain has "
          f"{plan.base.retrain.epochs}); val mean ± se\n")
    print(f"| task | row | selection, {plan.tune.epochs} ep | selection, {here} | test (seeds {args.seeds}) | CPU-s |")
    print("|---|---|---|---|---|---|")
    chosen: dict[str, dict[str, str]] = {}
    for task in tasks:
        data = plan.context(task).run.data
        val_size = len(build_dataset(data, "val", None))
        targets = [*build_dataset(data, "train", None).targets, *build_dataset(data, "val", None).targets]
        splits = (fold_splits(targets, args.kfold, plan.tune.seed) if args.kfold
                  else repeated_splits(targets, val_size, plan.tune.splits, plan.tune.seed))
        stored, longer, test = {}, {}, {}
        for row in rows:
            info = read_tune_info(plan, task, row)
            stored[row] = info["selection_mean"]
            results = [score(plan, task, info, epochs, split, k,
                             args.run / "ablation" / "select_fidelity"
                             / (f"{epochs}ep" + (f"-{args.kfold}folds" if args.kfold else "")) / task / row)
                       for k, split in enumerate(splits)]
            longer[row] = mean_se([r["accuracy"] for r in results])
            test[row] = statistics.fmean(cells[task, row, s] for s in seeds)
            print(f"| {task} | {row} | {stored[row]:.3f} | {longer[row][0]:.3f} ± {longer[row][1]:.3f} | "
                  f"{test[row]:.1f} | {sum(r['cpu_seconds'] for r in results):.0f} |")
            sys.stdout.flush()
        chosen[task] = {f"{plan.tune.epochs} ep": max(rows, key=lambda r: stored[r] or -1.0),
                        here: max(rows, key=lambda r: longer[r][0]),
                        "test (oracle)": max(rows, key=test.get)}
        chosen[task]["test"] = {rule: f"{test[row]:.1f}" for rule, row in chosen[task].items()}
    print("\n## The row each rule chooses (test accuracy of its cells, printed, not used)\n")
    for task, picks in chosen.items():
        shown = picks.pop("test")
        print(f"- {task}: " + "; ".join(f"{rule}: {row} ({shown[rule]})" for rule, row in picks.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
