"""Search-trial cost: evaluating a subnet inside the supernet vs a plain forward pass of the same
subnet materialised, and Optuna's overhead per trial for each storage.

    python benchmarks/bench_trial.py                                  # the demo's trained supernet
    python benchmarks/bench_trial.py --quick                          # shorter demo training, fewer trials
    python benchmarks/bench_trial.py --backbone vit_base_patch16_224  # random-init ViT-B/16, synthetic val

Part 1, one trial's evaluation. ``trial`` is exactly what the search calls
(:class:`SupernetFitness`: ``set_subnet`` + :func:`unitune.engine.train.evaluate` over the validation
tensors it decoded once); ``plain forward`` is a ``torch.no_grad`` loop of ``model(x)`` of the
materialised subnet (``supernet.materialize(subnet)``) over the same tensors; ``static evaluate``
is the same :func:`evaluate` on the materialised subnet (isolates weight sharing from the
accuracy bookkeeping). Subnets: random ones repaired into the run's budget, as the search draws
them. Target: trial / plain forward <= 1.10.

Part 2, Optuna's overhead: :func:`run_search` (TPE with repair, the real objective and
callbacks) with in-memory, journal-file and SQLite storage, interleaved; overhead per trial =
(time from the first trial's start to the last trial's end - the evaluation seconds the trials
recorded) / trials, as a fraction of the mean evaluation time.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from common import (
    add_common_args, default_workdir, demo_overrides, demo_run, interleaved, median_ratio, random_supernet_run, setup,
)
from unitune.search import run_search
from unitune.supernet.encoding import SubnetEncoding
from unitune.supernet.repair import repair_subnet
from unitune.search.fitness import SupernetFitness
from unitune.supernet import BackboneDims, Subnet, count_params
from unitune.supernet.budget import parse_budget
from unitune.engine.train import autocast, evaluate

TARGET = 1.10


def in_budget_subnets(model, budget: int, n: int, seed: int) -> list[Subnet]:
    space, dims = model.space, BackboneDims.from_model(model)
    encoding = SubnetEncoding(space, dims.depth, dims)
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        draw = {m: tuple(rng.choice(space.choices(m)) for _ in range(dims.depth)) for m in ("lora", "adapter", "vpt", "ssf")}
        out.append(repair_subnet(encoding, Subnet(**draw, ssf_global=rng.choice(space.choices("ssf_global"))), budget))
    return out


def bench_evaluation(fitness: SupernetFitness, subnets: list[Subnet], repeats: int) -> dict:
    device = fitness.device
    static = [fitness.model.materialize(s).eval() for s in subnets]

    def trial() -> None:
        for s in subnets:
            fitness(s)

    @torch.no_grad()
    def plain() -> None:
        for m in static:
            for x, _ in fitness.batches:
                with autocast(device, fitness.amp):
                    m(x)

    def static_evaluate() -> None:
        for m in static:
            evaluate(m, fitness.batches, device, fitness.num_classes, fitness.amp)

    times = interleaved({"trial": trial, "plain forward": plain, "static evaluate": static_evaluate},
                        repeats, warmup=1, device=device)
    per = {k: 1000 * statistics.median(v) / len(subnets) for k, v in times.items()}
    return {"ms_per_subnet": per,
            "trial/plain": median_ratio(times["trial"], times["plain forward"]),
            "trial/static_evaluate": median_ratio(times["trial"], times["static evaluate"]),
            "min trial/plain": min(times["trial"]) / min(times["plain forward"])}


def bench_optuna(fitness: SupernetFitness, budget: int, trials: int, repeats: int, workdir: Path) -> dict:
    model = fitness.model
    dims = BackboneDims.from_model(model)
    storages = ["in-memory", "journal", "sqlite"]
    rows: dict[str, list[tuple[float, float]]] = {s: [] for s in storages}
    for r in range(repeats):
        for kind in storages[r % 3:] + storages[: r % 3]:
            spec = {"in-memory": None, "journal": str(workdir / f"study-{r}.log"),
                    "sqlite": str(workdir / f"study-{r}.db")}[kind]
            result = run_search(fitness, model.space, dims, budget, n_trials=trials, storage=spec,
                                study_name=f"bench-{kind}-{r}", sampler="tpe", seed=r, progress=False)
            done = [t for t in result.study.trials if t.state.name == "COMPLETE"]
            span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
            evals = sum(t.user_attrs["eval_seconds"] for t in done)
            rows[kind].append(((span - evals) / len(done), evals / len(done)))
    out = {}
    for kind, values in rows.items():
        overhead = statistics.median(v[0] for v in values)
        evaluation = statistics.median(v[1] for v in values)
        out[kind] = {"overhead_ms": 1000 * overhead, "eval_ms": 1000 * evaluation, "fraction": overhead / evaluation,
                     "share": overhead / (overhead + evaluation)}
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap, backbone=False)
    ap.add_argument("--backbone", default="demo",
                    help="'demo' (the demo config's trained supernet), or 'tiny' / a timm ViT name for a "
                         "random-init supernet with synthetic validation images")
    ap.add_argument("--run", default=None, help="a demo run folder with pretrain/ and supernet.safetensors "
                                                "(default: trained into the work dir when missing)")
    ap.add_argument("--workdir", default=None, help="cache of trained runs (default: $TMPDIR/unitune-bench)")
    ap.add_argument("--images", type=int, default=None, help="synthetic val images (non-demo backbones); "
                                                             "default 200 (tiny), 20 (others)")
    ap.add_argument("--subnets", type=int, default=None, help="subnets timed per repeat (default 5; ViT-B 2)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--trials", type=int, default=None, help="trials per study in part 2 (default 60, quick 15)")
    ap.add_argument("--studies", type=int, default=None, help="studies per storage in part 2 (default 3, quick 1)")
    args = ap.parse_args(argv)
    device = setup(args)
    big = args.backbone not in ("demo", "tiny")
    workdir = Path(args.workdir) if args.workdir else default_workdir()

    if args.backbone == "demo":
        run, out = demo_run(args.run or workdir / ("demo-quick" if args.quick else "demo"),
                            demo_overrides(args.quick) + [f"device={args.device}"])
    else:
        images = args.images or (200 if args.backbone == "tiny" else 20)
        run, out = random_supernet_run(args.backbone, workdir / f"random-{args.backbone}-{images}", images,
                                       batch=64 if args.backbone == "tiny" else 10, device=args.device)
    fitness = SupernetFitness(run, out)
    model = fitness.model
    backbone_params = sum(p.numel() for p in model.vit.parameters() if not p.requires_grad)
    budget = parse_budget(run.search.budget, backbone_params)
    n_subnets = args.subnets or (2 if big else 5)
    repeats = args.repeats or ((2 if args.quick else 5) if big else (5 if args.quick else 20))
    subnets = in_budget_subnets(model, budget, n_subnets, seed=0)
    dims = BackboneDims.from_model(model)
    mean_params = statistics.fmean(count_params(s, dims, model.space).total for s in subnets)

    print(f"\n{run.model.backbone} ({args.backbone}), {fitness.num_images} val images in "
          f"{len(fitness.batches)} batches, {device}; {n_subnets} random subnets repaired into the budget "
          f"{budget:,} (mean {mean_params:,.0f} PEFT params); {repeats} interleaved repeats (+1 warm-up)")
    ev = bench_evaluation(fitness, subnets, repeats)
    print(f"{'variant':<16} {'ms / subnet':>12}")
    for k, v in ev["ms_per_subnet"].items():
        print(f"{k:<16} {v:>12.1f}")
    print(f"trial / plain forward   = {ev['trial/plain']:.3f} (min-time ratio {ev['min trial/plain']:.3f}; "
          f"{'meets' if ev['trial/plain'] <= TARGET else 'misses'} the <= {TARGET} target)")
    print(f"trial / static evaluate = {ev['trial/static_evaluate']:.3f} (the cost of weight sharing alone)")

    trials = args.trials or (15 if args.quick or big else 60)
    studies = args.studies or (1 if args.quick or big else 3)
    print(f"\nOptuna overhead per trial: TPE with repair, {trials} trials x {studies} studies per storage, interleaved")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        opt = bench_optuna(fitness, budget, trials, studies, Path(tmp))
    print(f"{'storage':<10} {'overhead ms':>12} {'eval ms':>8} {'overhead / eval':>16} {'share of trial':>15}")
    for kind, r in opt.items():
        print(f"{kind:<10} {r['overhead_ms']:>12.1f} {r['eval_ms']:>8.1f} {r['fraction']:>16.2f} {r['share']:>15.1%}")
    print(f"({time.perf_counter() - t0:.0f} s)")
    return {"evaluation": ev, "optuna": opt}


if __name__ == "__main__":
    main()
