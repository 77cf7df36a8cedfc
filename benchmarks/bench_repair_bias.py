"""Does the repair prefer a method or a block? Uniformly random proposals on ViT-B/16 (dimensions
from a model on the meta device, no weights), repaired into a budget, compared with what was
proposed (issue 15).

For each method: the mean number of blocks that hold it (proposed vs repaired), the share of its
proposed parameters the repair keeps, and per block the survival rate (among proposals that put
the method in that block, the share whose repaired subnet still has it there); for LoRA also the
mean rank per block. An unbiased repair keeps every block's survival rate alike (small spread
across blocks) and every method's kept share alike.

    python benchmarks/bench_repair_bias.py [--n 2000] [--budget 0.3M] [--backbone vit_base_patch16_224]

``--distinct TRIALS`` instead counts, for every sampler, the distinct subnets among the COMPLETE
trials of a search (tiny ViT of the tests, budget 6,000, the tests' synthetic fitness, seeds 0-2):
repaired proposals collide, and the search must not spend trials on subnets it already has.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from unitune.engine.backbone import create_backbone
from unitune.supernet.budget import parse_budget
from unitune.supernet.encoding import SubnetEncoding
from unitune.supernet.repair import repair_indices
from unitune.supernet import BackboneDims, SearchSpace
from unitune.supernet.space import METHODS


def measure(encoding: SubnetEncoding, budget: int, n: int, seed: int = 0) -> dict:
    """Bias figures of the repair over ``n`` uniformly random proposals (indices into the choices)."""
    rng = np.random.default_rng(seed)
    depth = encoding.depth
    names = {m: [f"{m}.{b:02d}" if depth <= 100 else None for b in range(depth)] for m in METHODS}
    searched = [m for m in METHODS if names[m][0] in encoding.distributions]
    present = {m: np.zeros((2, n, depth), dtype=bool) for m in searched}  # [proposed, repaired]
    sizes = {m: np.zeros((2, n, depth)) for m in searched}
    kept = {m: [0, 0] for m in searched}  # method parameters [proposed, repaired]
    fill = []
    for i in range(n):
        proposal = {name: int(rng.integers(d.low, d.high + 1)) for name, d in encoding.index_distributions.items()}
        repaired, _ = repair_indices(encoding, proposal, budget, seed=i)
        fill.append(encoding.n_params_at(repaired) / budget)
        for m in searched:
            for b, name in enumerate(names[m]):
                choices = encoding.space.choices(m)
                for k, params in enumerate((proposal, repaired)):
                    sizes[m][k, i, b] = choices[params[name]]
                    present[m][k, i, b] = choices[params[name]] > 0
                    kept[m][k] += encoding.cost[name][params[name]] - encoding.cost[name][0]
    out: dict = {"n": n, "budget": budget, "mean_fill": float(np.mean(fill)), "methods": {}}
    for m in searched:
        proposed, repaired = present[m]
        survival = (repaired & proposed).sum(0) / np.maximum(proposed.sum(0), 1)
        entry = {
            "blocks_proposed": float(proposed.sum(1).mean()),
            "blocks_repaired": float(repaired.sum(1).mean()),
            "params_kept": kept[m][1] / max(kept[m][0], 1),
            "survival_per_block": [round(float(s), 3) for s in survival],
            "survival_spread": float(survival.max() - survival.min()),
            "share_repaired_per_block": [round(float(s), 3) for s in repaired.mean(0)],
        }
        if len(encoding.space.choices(m)) > 2:
            entry["mean_size_proposed"] = [round(float(s), 2) for s in sizes[m][0].mean(0)]
            entry["mean_size_repaired"] = [round(float(s), 2) for s in sizes[m][1].mean(0)]
        out["methods"][m] = entry
    kept_shares = [e["params_kept"] for e in out["methods"].values()]
    out["kept_spread_across_methods"] = max(kept_shares) - min(kept_shares)
    return out


def distinct_counts(trials: int, seeds=(0, 1, 2)) -> None:
    import sys
    import warnings
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from search_util import synthetic_accuracy, tiny_dims  # noqa: E402

    from unitune.search import SAMPLERS, run_search

    fast = {"tpe": dict(n_startup_trials=10), "gp": dict(n_startup_trials=10), "nsga2": dict(population_size=12),
            "evolution": dict(population_size=12, n_parents=3, n_mutation=6, n_crossover=6)}
    print(f"| sampler | complete trials | distinct subnets (seeds {list(seeds)}) | proposals asked again "
          "(repaired subnet already held) | failed as duplicate | seconds |")
    print("|---|---|---|---|---|---|")
    for name in SAMPLERS:
        distinct, complete, duplicates, reasked = [], [], [], []
        start = time.perf_counter()
        for seed in seeds:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                study = run_search(synthetic_accuracy, SearchSpace(), tiny_dims(), 6000, trials, sampler=name,
                                   seed=seed, sampler_options=fast.get(name), progress=False).study
            done = [t for t in study.trials if t.state.name == "COMPLETE"]
            complete.append(len(done))
            distinct.append(len({tuple(sorted(t.params.items())) for t in done}))
            reasked.append(sum(t.system_attrs.get("unitune:resampled", 0) for t in done))
            duplicates.append(sum(str(t.user_attrs.get("fail_reason", "")).startswith("duplicate") for t in study.trials))
        print(f"| {name} | {complete} | {distinct} | {reasked} | {duplicates} | {time.perf_counter() - start:.0f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="vit_base_patch16_224")
    ap.add_argument("--budget", default="0.3M")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--distinct", type=int, metavar="TRIALS", help="count distinct subnets per sampler instead")
    args = ap.parse_args()
    if args.distinct:
        distinct_counts(args.distinct)
        return
    dims = BackboneDims.from_model(create_backbone(args.backbone, 2, meta=True))
    space = SearchSpace()
    encoding = SubnetEncoding(space, dims.depth, dims)
    budget = parse_budget(args.budget)
    start = time.perf_counter()
    result = measure(encoding, budget, args.n, args.seed)
    seconds = time.perf_counter() - start
    print(f"{args.backbone}, budget {budget}, {args.n} uniform proposals, space {space.to_dict()}")
    print(f"mean fill of the budget after repair: {result['mean_fill']:.3f}; {seconds:.1f} s")
    print("| method | blocks proposed | blocks repaired | params kept | survival block 0 | survival last block "
          "| min..max over blocks (spread) |")
    print("|---|---|---|---|---|---|---|")
    for m, e in result["methods"].items():
        s = e["survival_per_block"]
        print(f"| {m} | {e['blocks_proposed']:.2f} | {e['blocks_repaired']:.2f} | {e['params_kept']:.3f} | "
              f"{s[0]:.3f} | {s[-1]:.3f} | {min(s):.3f}..{max(s):.3f} ({e['survival_spread']:.3f}) |")
    print(f"spread of the kept parameter share across methods: {result['kept_spread_across_methods']:.3f}")
    for m, e in result["methods"].items():
        print(f"{m}: share of repaired subnets holding it, per block: {e['share_repaired_per_block']}")
        if "mean_size_repaired" in e:
            print(f"{m} mean size per block, repaired: {e['mean_size_repaired']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
