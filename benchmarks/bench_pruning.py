"""Cheaper fitness and a fitness without the supernet, on the demo or the suite (issue 15).

    python benchmarks/bench_pruning.py --run DIR          # a demo run folder with its supernet
    python benchmarks/bench_pruning.py --quick            # shorter demo training, fewer trials/seeds
    python benchmarks/bench_pruning.py --suite RUN_DIR [--tasks a,b]   # a `unitune compare` run

With ``--suite``, each task's ``tasks/<task>/config.yaml`` and the supernet its search stage
trained (``tasks/<task>/search/``) are copied into ``--scratch`` (nothing is written into the
suite's folder) and measured as the demo is, then one summary table over the tasks follows.

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
    from unitune.engine.backbone import create_backbone

    return BackboneDims.from_model(create_backbone(run.model.backbone, 2, kwargs=run.model.kwargs, meta=True))


def part1(run, out: Path, trials: int, seeds: list[int], extra: float = 1.0) -> dict[str, list[dict]]:
    fitness = SupernetFitness(run, out)
    pruners = ["none", "sha", "hyperband"]
    print(f"\n## Part 1: pruning, supernet fitness, TPE, {trials} trials, val set {fitness.num_images} images")
    rows = {p: [] for p in pruners}
    for p in ("none", "sha"):  # untimed warm-up: first-call costs (val subsets, lazy imports) hit no variant
        search(fitness, run, 1, 0, p)
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
    return rows


def part2(run, out: Path, trials: int, seed: int, epochs: int, top_k: int, supernet_seconds: float | None) -> dict:
    from unitune.data import build_dataset

    n_train = len(build_dataset(run.data, "train", None))
    n_val = len(build_dataset(run.data, "val", None))
    print(f"\n## Part 2 (search seed {seed}): supernet route vs standalone route, E={epochs} epochs, "
          f"train {n_train} / val {n_val} images")

    # supernet route
    fitness = SupernetFitness(run, out)
    started, cpu = time.perf_counter(), time.process_time()
    study = search(fitness, run, run.search.trials, seed, "none").study
    search_s = time.perf_counter() - started
    search_val = sum(t.user_attrs.get("val_images_seen", 0) for t in study.trials)
    from unitune.supernet.encoding import SubnetEncoding
    from unitune.search.rerank import candidates

    encoding = SubnetEncoding(_space(run), run_depth(run), None)
    chosen = candidates(study, top_k)
    search_cpu = time.process_time() - cpu
    accs, rerank_s, route_cpu = [], 0.0, search_cpu
    for t in chosen:
        acc, took, took_cpu = standalone_once(run, out, encoding.decode(t.params), epochs)
        accs.append(acc)
        rerank_s, route_cpu = rerank_s + took, route_cpu + took_cpu  # search + stand-alone check, one thread
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
    started, cpu = time.perf_counter(), time.process_time()
    sstudy = search(sfit, run, trials, seed, "hyperband").study
    s_s = time.perf_counter() - started
    s_cpu = time.process_time() - cpu
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
    print("\n| route | best stand-alone val | train images | val images | wall s | CPU s (without supernet training) |")
    print("|---|---|---|---|---|---|")
    print(f"| supernet (+ top-{top_k} & singles, {epochs} ep) | {max(accs):.4f} | {total_train} | {total_val} | "
          f"{total_s:.0f}{'' if supernet_seconds else ' + supernet training (not measured)'} | {route_cpu:.0f} |")
    print(f"| standalone ({trials} trials, {epochs} ep, hyperband) | {best:.4f} | {s_train} | {s_val} | {s_s:.0f} "
          f"| {s_cpu:.0f} |")
    return dict(seed=seed, supernet=dict(best=max(accs), pick=accs[0], train=total_train, val=total_val, wall=total_s,
                                         cpu=route_cpu, supernet_seconds=supernet_seconds),
                standalone=dict(best=best, train=s_train, val=s_val, wall=s_s, cpu=s_cpu, pruned=pruned, reach=reach))


_STANDALONE: dict = {}


def standalone_once(run, out: Path, subnet, epochs: int) -> tuple[float, float, float]:
    """``(stand-alone val accuracy, wall s, CPU s)`` of ``subnet``. The figure is deterministic
    (``retrain.seed``), so a subnet checked again in this process (the single methods, in every
    search seed) reuses it and is charged the seconds it took the first time."""
    key = (str(out), epochs, subnet)
    if key not in _STANDALONE:
        started, cpu = time.perf_counter(), time.process_time()
        acc = standalone_val_accuracy(run, out, subnet, epochs)
        _STANDALONE[key] = (acc, time.perf_counter() - started, time.process_time() - cpu)
    return _STANDALONE[key]


def run_depth(run) -> int:
    return len(_dims(run).blocks)


def suite_task(suite: Path, task: str, scratch: Path, device: str = "cpu"):
    """``(run, out, supernet_seconds, tau)`` of one task of a ``unitune compare`` run: its config
    and the supernet its search stage trained, copied into ``scratch/task`` (the suite's folder is
    only read). ``supernet_seconds``: the search stage's record (None if it has none); ``tau``: the
    re-rank's Kendall tau of that stage, from its ``best_subnet.yaml``."""
    import json
    import shutil

    import yaml

    from unitune.engine.config import load_run_config
    from unitune.engine.context import SUPERNET_FILE

    src, out = suite / "tasks" / task, scratch / task
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.yaml", f"search/{SUPERNET_FILE}", "search/search_result.json", "search/best_subnet.yaml"):
        if (src / name).is_file() and not (out / Path(name).name).is_file():
            shutil.copyfile(src / name, out / Path(name).name)
    run = load_run_config(out / "config.yaml", [f"device={device}"])
    record = json.loads((out / "search_result.json").read_text()) if (out / "search_result.json").is_file() else {}
    best = yaml.safe_load((out / "best_subnet.yaml").read_text()) if (out / "best_subnet.yaml").is_file() else {}
    return run, out, record.get("supernet_seconds"), (best.get("meta") or {}).get("kendall_tau")


def suite_tasks(suite: Path) -> list[str]:
    """The suite's tasks in its own order (``compare.json``), else its task folders by name."""
    import json

    if (suite / "compare.json").is_file():
        return list(json.loads((suite / "compare.json").read_text())["tasks"])
    return sorted(p.name for p in (suite / "tasks").iterdir() if p.is_dir())


def _median(values) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def suite_summary(p1: dict[str, dict], p2: dict[str, list[dict]], taus: dict[str, float | None]) -> None:
    """One table over the tasks for each part (the per-task tables are above it)."""
    if p1:
        print("\n## Summary, part 1: time (s) to the unpruned run's best val, per task (median over seeds; "
              "reached = seeds in which the pruned run reached it)")
        print("| task | none: time to its best | none: wall | sha: reached | sha: time to it | sha: wall "
              "| hyperband: reached | hyperband: time to it | hyperband: wall | best val none / sha / hyperband (mean) |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        pooled = {p: [] for p in ("none", "sha", "hyperband")}
        for task, rows in p1.items():
            cells = []
            for p in ("none", "sha", "hyperband"):
                pooled[p] += rows[p]
                reached = [r["to_target"] for r in rows[p] if r["to_target"] is not None]
                wall = _median(r["wall"] for r in rows[p])
                cells += ([f"{_median(reached):.1f}", f"{wall:.1f}"] if p == "none" else
                          [f"{len(reached)}/{len(rows[p])}", f"{_median(reached):.1f}", f"{wall:.1f}"])
            bests = " / ".join(f"{statistics.fmean(r['best'] for r in rows[p]):.4f}" for p in ("none", "sha", "hyperband"))
            print(f"| {task} | " + " | ".join(cells) + f" | {bests} |")
        # paired by task and seed: a pruned run's time to the target over the unpruned run's
        for p in ("sha", "hyperband"):
            pairs = [(r["to_target"], n["to_target"]) for r, n in zip(pooled[p], pooled["none"])]
            ratios = [a / b for a, b in pairs if a is not None and b]
            print(f"{p}: reached the unpruned best in {sum(a is not None for a, _ in pairs)}/{len(pairs)} task-seeds; "
                  f"time to it / the unpruned run's time to it: median {_median(ratios):.2f} "
                  f"(range {min(ratios, default=float('nan')):.2f}-{max(ratios, default=float('nan')):.2f}, "
                  f"{sum(x < 1 for x in ratios)} of {len(ratios)} sooner); best val higher / equal / lower than "
                  f"unpruned: {sum(r['best'] > n['best'] for r, n in zip(pooled[p], pooled['none']))} / "
                  f"{sum(r['best'] == n['best'] for r, n in zip(pooled[p], pooled['none']))} / "
                  f"{sum(r['best'] < n['best'] for r, n in zip(pooled[p], pooled['none']))}")
    if p2:
        print("\n## Summary, part 2: best stand-alone val after E epochs, supernet route vs standalone route")
        print("| task | stage tau | seed | supernet route: best (its own pick) | train / val images | wall s "
              "(+ supernet training) | CPU s | standalone route: best | train / val images | wall s | CPU s "
              "| standalone - supernet |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        diffs = []
        for task, rows in p2.items():
            tau = taus.get(task)
            for r in rows:
                a, b = r["supernet"], r["standalone"]
                diffs.append(b["best"] - a["best"])
                sn = a["supernet_seconds"]
                print(f"| {task} | {'n/a' if tau is None else f'{tau:.2f}'} | {r['seed']} | {a['best']:.4f} ({a['pick']:.4f}) "
                      f"| {a['train']} / {a['val']} | {a['wall'] - (sn or 0):.0f} (+ {'%.0f' % sn if sn else 'not measured'}) "
                      f"| {a['cpu']:.0f} | {b['best']:.4f} | {b['train']} / {b['val']} | {b['wall']:.0f} | {b['cpu']:.0f} "
                      f"| {diffs[-1]:+.4f} |")
        if diffs:
            print(f"standalone - supernet route, best stand-alone val: mean {statistics.fmean(diffs):+.4f}, std "
                  f"{statistics.stdev(diffs) if len(diffs) > 1 else 0.0:.4f}, standalone higher / equal / lower in "
                  f"{sum(d > 0 for d in diffs)} / {sum(d == 0 for d in diffs)} / {sum(d < 0 for d in diffs)} of {len(diffs)}")


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
    ap.add_argument("--suite", default=None, help="a `unitune compare` run folder: measure each of its tasks")
    ap.add_argument("--tasks", default=None, help="with --suite: a comma-separated subset of its tasks")
    ap.add_argument("--scratch", default=None, help="with --suite: where each task's files are copied "
                                                    "(default: the bench work dir's suite/)")
    args = ap.parse_args(argv)
    setup(args)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    seeds = [int(s) for s in args.seeds.split(",")]
    route_seeds = [int(s) for s in (args.route_seeds or args.seeds.split(",")[0]).split(",")]
    parts = args.parts.split(",")
    if args.suite:
        suite = Path(args.suite)
        tasks = args.tasks.split(",") if args.tasks else suite_tasks(suite)
        scratch = Path(args.scratch) if args.scratch else default_workdir() / "suite"
        p1, p2, taus = {}, {}, {}
        for task in tasks:
            run, out, supernet_seconds, taus[task] = suite_task(suite, task, scratch, args.device)
            took = f"{supernet_seconds:.1f} s (wall, its search stage's record)" if supernet_seconds else "not measured"
            print(f"\n# task {task} ({suite / 'tasks' / task}, copied to {out}); supernet training {took}")
            if "1" in parts:
                p1[task] = part1(run, out, args.trials or run.search.trials, seeds, args.extra)
            if "2" in parts:
                p2[task] = [part2(run, out, args.standalone_trials, seed, args.epochs, args.top_k, supernet_seconds)
                            for seed in route_seeds]
        suite_summary(p1, p2, taus)
        return
    out = Path(args.run) if args.run else default_workdir() / ("demo-quick" if args.quick else "demo")
    had_supernet = (out / "supernet.safetensors").is_file()
    started = time.perf_counter()
    run, out = demo_run(out, demo_overrides(args.quick))
    supernet_seconds = None if had_supernet else time.perf_counter() - started  # includes pretrain if run here
    if had_supernet and (out / "run_summary.json").is_file():
        import json

        s = json.loads((out / "run_summary.json").read_text())["seconds"].get("supernet")
        supernet_seconds = s if isinstance(s, (int, float)) else None
    trials = args.trials or run.search.trials
    if "1" in parts:
        part1(run, out, trials, seeds, args.extra)
    if "2" in parts:
        for seed in route_seeds:
            part2(run, out, args.standalone_trials, seed, args.epochs, args.top_k, supernet_seconds)

if __name__ == "__main__":
    main()
