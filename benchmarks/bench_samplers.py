"""Samplers compared at a fixed trial count on the same trained supernet.

    python benchmarks/bench_samplers.py                       # the demo supernet, 60 trials, 5 seeds
    python benchmarks/bench_samplers.py --run runs/demo       # a finished `unitune run` folder
    python benchmarks/bench_samplers.py --quick               # shorter demo training, fewer trials/seeds
    python benchmarks/bench_samplers.py --samplers tpe,random,evolution,cmaes,gp,nsga2

Every sampler runs through :func:`run_search` exactly as ``unitune search`` does (wrapped in
:class:`RepairSampler`, so every trial is a feasible subnet within the config's budget), with an
in-memory study, on the same fitness (:class:`SupernetFitness`: val accuracy with inherited
weights). The fitness is deterministic, so it is memoised across runs: a subnet evaluated once is
not evaluated again (the trial still counts). Seeds run in the outer loop and samplers inside it.

Reported per sampler: the best feasible val accuracy after N trials (mean, std, min, max over
seeds), the same after N/2 trials, and how many distinct subnets it evaluated. For scale: the
val set's resolution (one image) and the best accuracy any run found.

NOAH's evolution is scaled to the trial count: population N/5, top N/20 parents, the population
split between mutations and crossovers (NOAH: 50 / 10 / 25 / 25 over ~1,000 trials).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from common import add_common_args, default_workdir, demo_overrides, demo_run, mean_std, setup
from unitune.search import run_search
from unitune.search.fitness import SupernetFitness
from unitune.supernet import BackboneDims, Subnet
from unitune.supernet.budget import parse_budget


class Memo:
    """A deterministic fitness evaluated once per distinct subnet."""

    def __init__(self, fitness: SupernetFitness):
        self.fitness = fitness
        self.cache: dict[Subnet, float] = {}

    def __call__(self, subnet: Subnet) -> float:
        if subnet not in self.cache:
            self.cache[subnet] = self.fitness(subnet)
        return self.cache[subnet]


def options(sampler: str, trials: int) -> dict:
    if sampler == "evolution":
        population = max(4, trials // 5)
        return {"population_size": population, "n_parents": max(2, trials // 20),
                "n_mutation": population // 2, "n_crossover": population - population // 2}
    return {}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap, backbone=False)
    ap.add_argument("--run", default=None, help="a demo run folder (pretrain/, supernet.safetensors); "
                                                "default: trained in the work dir when missing")
    ap.add_argument("--workdir", default=None, help="cache of trained runs (default: $TMPDIR/unitune-bench)")
    ap.add_argument("--samplers", default="tpe,random,evolution,cmaes,nsga2,gp")
    ap.add_argument("--trials", type=int, default=None, help="trials per search (default: the config's, 60; quick 20)")
    ap.add_argument("--seeds", type=int, default=None, help="searches per sampler (default 5, quick 2)")
    ap.add_argument("--budget", default=None, help="default: the config's search.budget")
    args = ap.parse_args(argv)
    setup(args)
    workdir = Path(args.workdir) if args.workdir else default_workdir()
    run, out = demo_run(args.run or workdir / ("demo-quick" if args.quick else "demo"),
                        demo_overrides(args.quick) + [f"device={args.device}"])
    fitness = SupernetFitness(run, out)
    memo = Memo(fitness)
    model = fitness.model
    dims = BackboneDims.from_model(model)
    backbone_params = sum(p.numel() for p in model.vit.parameters() if not p.requires_grad)
    budget = parse_budget(args.budget or run.search.budget, backbone_params)
    trials = args.trials or (20 if args.quick else run.search.trials)
    seeds = list(range(args.seeds or (2 if args.quick else 5)))
    samplers = [s.strip() for s in args.samplers.split(",") if s.strip()]

    print(f"\n{run.model.backbone} demo supernet, budget {budget:,}, {trials} trials per search, seeds {seeds}, "
          f"fitness on {fitness.num_images} val images (one image = {100 / fitness.num_images:.2f} points)")
    best: dict[str, list[float]] = {s: [] for s in samplers}
    half: dict[str, list[float]] = {s: [] for s in samplers}
    distinct: dict[str, list[int]] = {s: [] for s in samplers}
    seconds: dict[str, float] = {s: 0.0 for s in samplers}
    for seed in seeds:
        for sampler in samplers[seed % len(samplers):] + samplers[: seed % len(samplers)]:
            t0 = time.perf_counter()
            result = run_search(memo, model.space, dims, budget, n_trials=trials, storage=None,
                                study_name=f"{sampler}-{seed}", sampler=sampler, seed=seed, progress=False,
                                sampler_options=options(sampler, trials))
            seconds[sampler] += time.perf_counter() - t0
            done = sorted((t for t in result.study.trials if t.state.name == "COMPLETE"), key=lambda t: t.number)
            values = [t.value for t in done]
            best[sampler].append(max(values))
            half[sampler].append(max(values[: trials // 2]))
            distinct[sampler].append(len({tuple(sorted(t.params.items())) for t in done}))
            assert all(t.user_attrs["n_params"] <= budget for t in done)
        print(f"  seed {seed}: " + ", ".join(f"{s} {100 * best[s][-1]:.2f}" for s in samplers), flush=True)

    top = max(memo.cache.values())
    print(f"\n{'sampler':<10} {f'best@{trials} mean ± std':>22} {'min':>6} {'max':>6} "
          f"{f'best@{trials // 2} mean':>14} {'distinct':>9} {'s / search':>10}")
    results = {}
    for s in samplers:
        m, sd = mean_std(best[s])
        results[s] = {"best": best[s], "mean": m, "std": sd, "half_mean": statistics.fmean(half[s]),
                      "distinct": statistics.fmean(distinct[s]), "seconds": seconds[s] / len(seeds)}
        print(f"{s:<10} {100 * m:>14.2f} ± {100 * sd:<5.2f} {100 * min(best[s]):>6.2f} {100 * max(best[s]):>6.2f} "
              f"{100 * results[s]['half_mean']:>14.2f} {results[s]['distinct']:>9.1f} {results[s]['seconds']:>10.1f}")
    print(f"\nbest val accuracy any search found: {100 * top:.2f} ({len(memo.cache)} distinct subnets evaluated "
          f"in all); one val image = {100 / fitness.num_images:.2f} points")
    if {"tpe", "random"} <= set(results):
        for other in ("random", "evolution"):
            if other in results:
                d = results["tpe"]["mean"] - results[other]["mean"]
                noise = max(results["tpe"]["std"], results[other]["std"])
                word = "beats" if d > noise else ("ties with (within one std)" if d >= -noise else "loses to")
                print(f"tpe {word} {other}: {100 * d:+.2f} points (larger std {100 * noise:.2f})")
    return results


if __name__ == "__main__":
    main()
