"""Cheaper fitness and a fitness without the supernet, on the demo (issue 15).

    python benchmarks/bench_pruning.py --run DIR          # a demo run folder with its supernet
    python benchmarks/bench_pruning.py --quick            # shorter demo training, fewer trials/seeds

Part 1, pruning (``search.pruner``), supernet fitness: for each seed, the same TPE search (the
demo's budget and trial count, in-memory study, one worker) runs with ``none``, ``sha`` and
``hyperband``, in a rotating order. Per run: wall time (first trial start to last trial end),
val images scored, final best val accuracy, and the wall time at which the best-so-far first
reached the final best of the ``none`` run of that seed (the "same best"; "never" if it did not).
``--extra 2`` gives the pruned runs twice the trials, so what pruning saves buys more subnets.

Part 2, the route (``search.fitness``): the supernet route (train the supernet, the search on
inherited weights, then the K best trials and the single methods trained stand-alone for E
epochs, as ``search.rerank``) against the standalone route (each trial trains its subnet for E
epochs, Hyperband on the per-epoch val accuracy). Both are scored by the same figure: the best
stand-alone val accuracy after E epochs found, against the compute spent (training and val image
passes, wall time). The pretrained backbone is shared and not counted. The test split is never read.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from common import add_common_args, default_workdir, demo_overrides, demo_run, setup
from unitune.search import run_search
from unitune.search.fitness import StandaloneFitness, SupernetFitness
from unitune.search.rerank import standalone_val_accuracy
from unitune.supernet import BackboneDims


def timeline(study: optuna.Study) -> tuple[float, list[tuple[float, float]]]:
    """(seconds from the first trial's start to the last one's end, [(seconds since start,
    best-so-far)] at each finished trial's end)."""
    trials = sorted((t for t in study.trials if t.datetime_complete), key=lambda t: t.datetime_complete)
    start = min(t.datetime_start for t in trials)
    best, points = float("-inf"), []
    for t in trials:
        if t.state == TrialState.COMPLETE:
            best = max(best, t.values[0])
        points.append(((t.datetime_complete - start).total_seconds(), best))
    return points[-1][0], points


def time_to(points: list[tuple[float, float]], target: float) -> float | None:
    return next((s for s, b in points if b >= target - 1e-12), None)


def search(fitness, run, trials: int, seed: int, pruner: str, objectives=("acc",)):
    dims = BackboneDims.from_model(fitness.model) if hasattr(fitness, "model") else _dims(run)
    return run_search(fitness, _space(run), dims, run.search.budget, trials, sampler="tpe", seed=seed,
                      pruner=pruner, progress=False, study_name=f"{pruner}-{seed}")


def _space(run):
    from unitune.supernet import SearchSpace

    return SearchSpace.from_dict(run.space)


def _dims(run):
    from unitune.backbone import create_backbone

    return BackboneDims.from_model(create_backbone(run.model.backbone, 2, kwargs=run.model.kwargs, meta=True))


def part1(run, out: Path, trials: int, seeds: list[int], extra: float = 1.0) -> None:
    fitness = SupernetFitness(run, out)
    pruners = ["none", "sha", "hyperband"]
    print(f"\n## Part 1: pruning, supernet fitness, TPE, {trials} trials, val set {fitness.num_images} images")
    rows = {p: [] for p in pruners}
    for i, seed in enumerate(seeds):
        order = pruners[i % 3:] + pruners[: i % 3]
        results = {}
        for p in order:
            started = time.perf_counter()
            # A pruned run gets `extra` times the trials: what pruning saves should buy more
            # subnets; "time to none's best" then says whether it finds as good a one sooner.
            study = search(fitness, run, trials if p == "none" else int(trials * extra), seed, p).study
            total = time.perf_counter() - started
            wall, points = timeline(study)
            seen = sum(t.user_attrs.get("val_images_seen", 0) for t in study.trials)
            n_pruned = sum(t.state == TrialState.PRUNED for t in study.trials)
            best_trial = max((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: t.values[0])
            results[p] = dict(wall=total, points=points, seen=seen, pruned=n_pruned, best=best_trial.values[0],
                              best_params=best_trial.params,
                              evals=sum(t.user_attrs.get("eval_seconds", 0) for t in study.trials))
        target = results["none"]["best"]
        for p in pruners:
            r = results[p]
            r["to_target"] = time_to(r["points"], target)
            # the best found within the unpruned run's wall time
            r["at_none"] = max((b for t_, b in r["points"] if t_ <= results["none"]["points"][-1][0]), default=float("nan"))
            r["same_subnet"] = r["best_params"] == results["none"]["best_params"]
            rows[p].append(r)
            tt = "never" if r["to_target"] is None else f"{r['to_target']:.1f}"
            print(f"seed {seed} {p:9s}: wall {r['wall']:6.1f} s (fitness {r['evals']:5.1f} s), pruned {r['pruned']:2d}, "
                  f"val images {r['seen']:6d}, best val {r['best']:.4f} (same subnet as none: {r['same_subnet']}), "
                  f"time to none's best {tt} s, best within none's time {r['at_none']:.4f}")
    print("\n| pruner | wall s (median) | fitness s (median) | val images (mean) | pruned (mean) | best val (mean) "
          "| reached none's best | time to it, s (median of those that did) | best within none's time (mean) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for p in pruners:
        rs = rows[p]
        reached = [r["to_target"] for r in rs if r["to_target"] is not None]
        print(f"| {p} | {statistics.median(r['wall'] for r in rs):.1f} | {statistics.median(r['evals'] for r in rs):.1f} "
              f"| {statistics.fmean(r['seen'] for r in rs):.0f} | {statistics.fmean(r['pruned'] for r in rs):.1f} "
              f"| {statistics.fmean(r['best'] for r in rs):.4f} | {len(reached)}/{len(rs)} "
              f"| {statistics.median(reached) if reached else float('nan'):.1f} | {statistics.fmean(r['at_none'] for r in rs):.4f} |")


def part2(run, out: Path, trials: int, seed: int, epochs: int, top_k: int, supernet_seconds: float | None) -> None:
    from unitune.data import build_dataset

    n_train = len(build_dataset(run.data, "train", None))
    n_val = len(build_dataset(run.data, "val", None))
    print(f"\n## Part 2 (search seed {seed}): supernet route vs standalone route, E={epochs} epochs, "
          f"train {n_train} / val {n_val} images")

    # supernet route
    fitness = SupernetFitness(run, out)
    started = time.perf_counter()
    study = search(fitness, run, run.search.trials, seed, "none").study
    search_s = time.perf_counter() - started
    search_val = sum(t.user_attrs.get("val_images_seen", 0) for t in study.trials)
    from unitune.search.encoding import SubnetEncoding
    from unitune.search.rerank import candidates

    encoding = SubnetEncoding(_space(run), run_depth(run), None)
    chosen = candidates(study, top_k)
    started = time.perf_counter()
    accs = []
    for t in chosen:
        accs.append(standalone_val_accuracy(run, out, encoding.decode(t.params), epochs))
    rerank_s = time.perf_counter() - started
    supernet_train = run.supernet.epochs * n_train
    print(f"supernet route: supernet training {run.supernet.epochs} epochs ({supernet_train} train images, "
          f"{'%.0f s' % supernet_seconds if supernet_seconds else 'time not measured here'}); search "
          f"{run.search.trials} trials {search_s:.1f} s ({search_val} val images); stand-alone check of "
          f"{len(chosen)} subnets (top {top_k} + single methods) {rerank_s:.1f} s "
          f"({len(chosen) * epochs * n_train} train + {len(chosen) * epochs * n_val} val images); "
          f"best stand-alone val {max(accs):.4f} (supernet's own pick: {accs[0]:.4f})")
    total_train = supernet_train + len(chosen) * epochs * n_train
    total_val = search_val + len(chosen) * epochs * n_val
    total_s = (supernet_seconds or 0) + search_s + rerank_s

    # standalone route
    sfit = StandaloneFitness(run, out, epochs)
    started = time.perf_counter()
    sstudy = search(sfit, run, trials, seed, "hyperband").study
    s_s = time.perf_counter() - started
    s_train = sum(t.user_attrs.get("train_images", 0) for t in sstudy.trials)
    s_val = sum(t.user_attrs.get("val_images_seen", 0) for t in sstudy.trials)
    complete = [t for t in sstudy.trials if t.state == TrialState.COMPLETE]
    best = max(t.values[0] for t in complete)
    pruned = sum(t.state == TrialState.PRUNED for t in sstudy.trials)
    _, points = timeline(sstudy)
    reach = time_to(points, max(accs))
    print(f"standalone route: {trials} trials ({pruned} pruned) {s_s:.1f} s, {s_train} train + {s_val} val images; "
          f"best stand-alone val {best:.4f}; reached the supernet route's best ({max(accs):.4f}) at "
          f"{'never' if reach is None else '%.0f s' % reach}")
    print("\n| route | best stand-alone val | train images | val images | wall s |")
    print("|---|---|---|---|---|")
    print(f"| supernet (+ top-{top_k} & singles, {epochs} ep) | {max(accs):.4f} | {total_train} | {total_val} | "
          f"{total_s:.0f}{'' if supernet_seconds else ' + supernet training'} |")
    print(f"| standalone ({trials} trials, {epochs} ep, hyperband) | {best:.4f} | {s_train} | {s_val} | {s_s:.0f} |")


def run_depth(run) -> int:
    return len(_dims(run).blocks)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, backbone=False)
    ap.add_argument("--run", default=None, help="demo run folder (pretrain/ and supernet.safetensors reused)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--trials", type=int, default=None, help="part 1 trials (default: the config's)")
    ap.add_argument("--standalone-trials", type=int, default=24)
    ap.add_argument("--epochs", type=int, default=5, help="stand-alone epochs per subnet (both routes)")
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--parts", default="1,2")
    ap.add_argument("--route-seeds", default=None, help="part 2 search seeds (default: the first of --seeds)")
    ap.add_argument("--extra", type=float, default=1.0, help="part 1: trials of the pruned runs, x the unpruned's")
    args = ap.parse_args(argv)
    setup(args)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    out = Path(args.run) if args.run else default_workdir() / ("demo-quick" if args.quick else "demo")
    had_supernet = (out / "supernet.safetensors").is_file()
    started = time.perf_counter()
    run, out = demo_run(out, demo_overrides(args.quick))
    supernet_seconds = None if had_supernet else time.perf_counter() - started  # includes pretrain if run here
    if had_supernet and (out / "run_summary.json").is_file():
        import json

        s = json.loads((out / "run_summary.json").read_text())["seconds"].get("supernet")
        supernet_seconds = s if isinstance(s, (int, float)) else None
    seeds = [int(s) for s in args.seeds.split(",")]
    trials = args.trials or run.search.trials
    parts = args.parts.split(",")
    if "1" in parts:
        part1(run, out, trials, seeds, args.extra)
    if "2" in parts:
        for seed in [int(s) for s in (args.route_seeds or args.seeds.split(",")[0]).split(",")]:
            part2(run, out, args.standalone_trials, seed, args.epochs, args.top_k, supernet_seconds)


if __name__ == "__main__":
    main()
