"""Sampler quality on the synthetic budget problem, over seeds (the figure a test must not assert).

    python benchmarks/bench_samplers_synthetic.py                 # 6 samplers x 10 seeds, 16 trials
    python benchmarks/bench_samplers_synthetic.py --trials 40 --seeds 20

The fitness is the tests' synthetic one (``tests/search_util.py``): every module adds a fixed,
position-dependent gain, so the best subnet under the budget is known exactly (a knapsack solved by
dynamic programming). Each sampler runs through :func:`run_search` as ``unitune search`` does
(repair wrapper, single-method seeds first), in memory, with the tests' small start-up settings.

Reported per sampler: the share of the optimum's gain over 0.5 that the best trial reached, mean,
std, min and max over seeds. A seeded sampler's trajectory changes with optuna/torch/scipy releases
(the GP sampler above all), which is why this lives here and not in ``tests/``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common import REPO, machine, mean_std

sys.path.insert(0, str(REPO / "tests"))
from search_util import knapsack_optimum, synthetic_accuracy, tiny_dims  # noqa: E402

from unitune.search import run_search  # noqa: E402
from unitune.supernet import SearchSpace  # noqa: E402

BUDGET = 6000  # as the tests: about a quarter of the largest subnet, so most random configs need repair
FAST = {
    "tpe": dict(n_startup_trials=4),
    "gp": dict(n_startup_trials=4),
    "nsga2": dict(population_size=4),
    "evolution": dict(population_size=4, n_parents=2, n_mutation=2, n_crossover=2),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samplers", default="tpe,cmaes,gp,nsga2,random,evolution")
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--seeds", type=int, default=10)
    args = ap.parse_args()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space, dims = SearchSpace(), tiny_dims()
    optimum = knapsack_optimum(space, dims, BUDGET)
    print(f"# {machine()}; optuna {optuna.__version__}; budget {BUDGET}, optimum {optimum:.4f}, "
          f"{args.trials} trials, seeds 0-{args.seeds - 1}")
    print(f"{'sampler':<10} {'share of the optimum gain':>26} {'min':>6} {'max':>6}")
    for sampler in args.samplers.split(","):
        shares = []
        for seed in range(args.seeds):
            result = run_search(synthetic_accuracy, space, dims, BUDGET, args.trials, sampler=sampler, seed=seed,
                                sampler_options=FAST.get(sampler), progress=False)
            shares.append((result.best_trial.value - 0.5) / (optimum - 0.5))
        mean, std = mean_std(shares)
        print(f"{sampler:<10} {mean:>20.3f} ± {std:.3f} {min(shares):>6.3f} {max(shares):>6.3f}")


if __name__ == "__main__":
    main()
