"""The mini-VTAB suite's report for RESULTS.md (issues 11 and 15), from finished ``unitune compare`` folders.

    python benchmarks/minivtab_report.py --out runs/minivtab_full \
        --sampler sandwich=runs/minivtab_sandwich --sampler budget=runs/minivtab_budget

Prints (and, for the main folder, rewrites ``results.csv``, ``table.md`` and the plot with this
unitune's report code): the table of every method, search against each single method paired by
task and seed, and the re-rank's Kendall tau per task. For each ``--sampler NAME=FOLDER`` (a
``compare --methods search`` run of the same config with ``supernet.sampler=NAME``): tau per task
and the searched subnet's test accuracy next to the main folder's (``uniform``), with the
number of distinct subnets each study evaluated. Only tasks whose every cell is finished count,
so it can be run while a suite is still going.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import optuna

from unitune.commands.compare import paired_vs_single, plan_compare, search_trust, summarise, write_report
from unitune.io import read_json

optuna.logging.set_verbosity(optuna.logging.WARNING)


def finished_plan(config: str, out: str, methods=None):
    plan = plan_compare(config, out, methods=methods)
    tasks = [t for t in plan.tasks if all(plan.cell_file(t, m, s).is_file() for m in plan.methods for s in plan.seeds)]
    if not tasks:
        sys.exit(f"{out}: no task has every cell finished yet")
    return plan_compare(config, out, tasks=tasks, methods=methods)


def search_rows(plan) -> dict[str, list[float]]:
    return {t: [100 * plan.read_cell(t, "search", s)["test_accuracy"] for s in plan.seeds]
            for t in plan.tasks}


def distinct_subnets(plan, task: str) -> tuple[int, int]:
    """(distinct parameter sets, complete trials) of the task's search study."""
    db = plan.search_dir(task) / "study.db"
    storage = f"sqlite:///{db}"
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return len({tuple(sorted(t.params.items())) for t in complete}), len(complete)


def fmt(values: list[float]) -> str:
    return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/minivtab.yaml")
    ap.add_argument("--out", required=True, help="the full compare folder (supernet.sampler as configured)")
    ap.add_argument("--sampler", action="append", default=[], metavar="NAME=FOLDER",
                    help="a --methods search run of the same config with supernet.sampler=NAME")
    args = ap.parse_args()

    plan = finished_plan(args.config, args.out)
    pre = Path(args.out) / "pretrain" / "pretrain_result.json"
    report = write_report(plan, read_json(pre) if pre.is_file() else None)
    print(f"tasks finished: {list(plan.tasks)}; seeds {list(plan.seeds)}\n")
    print((plan.out / "table.md").read_text())

    if args.sampler:
        runs = {plan.base.supernet.sampler: plan}
        for item in args.sampler:
            name, _, folder = item.partition("=")
            runs[name] = finished_plan(args.config, folder, methods=["search"])
        tasks = [t for t in plan.tasks if all(t in p.tasks for p in runs.values())]
        print("Supernet samplers (tau: the re-rank's Kendall tau, inherited vs stand-alone val accuracy; "
              "test: the searched subnet retrained, mean ± std over seeds; distinct: distinct subnets / "
              "complete trials of the search):\n")
        print("| sampler | " + " | ".join(f"{t} tau | {t} test | {t} distinct" for t in tasks) +
              " | mean tau | mean test |")
        print("|" + "---|" * (3 * len(tasks) + 3))
        for name, p in runs.items():
            trust, rows = search_trust(p), search_rows(p)
            cells, taus = [], []
            for t in tasks:
                tau = trust[t]["kendall_tau"]
                taus.append(tau)
                d, n = distinct_subnets(p, t)
                cells += [f"{tau:.2f}" if tau is not None else "n/a", fmt(rows[t]), f"{d}/{n}"]
            means = [statistics.fmean(rows[t][i] for t in tasks) for i in range(len(p.seeds))]
            known = [x for x in taus if x is not None]
            print(f"| {name} | " + " | ".join(cells) +
                  f" | {statistics.fmean(known) if known else float('nan'):.2f} | {fmt(means)} |")
        print("\nEach sampler's searched subnet against the main folder's single methods, paired by task and "
              "seed (mean ± std of the difference, pairs won, standard error), and its mean of group means:\n")
        singles = [plan.read_cell(t, m, s) for t in tasks for m in ("lora", "ssf") for s in plan.seeds]
        for name, p in runs.items():
            # compare's own pairing and headline, on this sampler's search cells and the main folder's singles
            cells = singles + [p.read_cell(t, "search", s) for t in tasks for s in p.seeds]
            paired = {r["method"]: r for r in paired_vs_single(cells, tasks, p.seeds, ("search", "lora", "ssf"))}
            parts = [f"vs {m} {r['mean_diff']:+.2f} ± {r['std_diff']:.2f} ({r['wins']}/{r['n']}, "
                     f"s.e. {r['std_diff'] / r['n'] ** 0.5:.2f})" for m in ("lora", "ssf") for r in [paired[m]]]
            headline = summarise(cells, tasks, plan.groups, p.seeds, ["search"])["search"]["mean_of_groups"]
            print(f"- {name}: " + "; ".join(parts) + f"; mean of group means {headline[0]:.1f} ± {headline[1]:.1f}")
    return 0 if report else 1


if __name__ == "__main__":
    sys.exit(main())
