"""Cheaper fitness with Optuna's own pruning, and the names of the fitnesses (issue 15).

A fitness may evaluate a subnet in growing fidelities: ``fitness.staged(subnet)`` yields
``(step, val_accuracy)`` pairs, each at a higher fidelity than the one before, the last being
the trial's value. The objective reports each pair with ``trial.report`` and stops the trial
(``optuna.TrialPruned``, state PRUNED) when the study's pruner says ``should_prune()``.

- ``supernet`` fitness: steps 1..4 are the first 1/4, 1/2, 3/4 and all of the validation images
  (a fixed seeded shuffle, counted cumulatively, so a trial that is never pruned costs exactly one
  pass over the val set, as without pruning);
- ``standalone`` fitness: step e is the val accuracy after training epoch e from the pretrained
  backbone (multi-fidelity search).

Pruners (``search.pruner``): ``sha`` is Optuna's ``SuccessiveHalvingPruner`` and ``hyperband``
its ``HyperbandPruner``, both with reduction factor 2 and resource 1 = one step, so the rungs
of the supernet route sit at 1/4, 1/2 and all of the val set. ``auto`` (the default) is
``hyperband`` for the standalone fitness, where a step is a whole training epoch and pruning
saves most of the compute, and ``none`` for the supernet fitness: there a trial is one val pass
of seconds, and the measured saving did not pay for judging subnets on a quarter of a small,
noisy val set (benchmarks/RESULTS.md §10). A pruned trial is never the best subnet
(:mod:`.export` ranks COMPLETE trials only), and never evaluated again (:mod:`.dedup` counts it
as holding its subnet). Single-method and user seeds report but are never pruned: they are the
baselines the final pick is compared with.
"""

from __future__ import annotations

from optuna.pruners import BasePruner, HyperbandPruner, NopPruner, SuccessiveHalvingPruner

from unitune.engine.config import FITNESSES, PRUNERS  # the config declares the names (search.fitness, search.pruner)
from unitune.errors import UniTuneError

REDUCTION_FACTOR = 2
PRUNED_AT_ATTR = "pruned_at_step"


def check_fitness_pruner(fitness: str, pruner: str, objectives: str | tuple[str, ...], where: str) -> str:
    """Validate ``search.fitness`` and ``search.pruner``; the pruner name ``auto`` resolves to."""
    if fitness not in FITNESSES:
        raise UniTuneError(f"{where}.fitness: expected one of {list(FITNESSES)}, got {fitness!r}")
    if pruner not in PRUNERS:
        raise UniTuneError(f"{where}.pruner: expected one of {list(PRUNERS)}, got {pruner!r}")
    n_objectives = len(objectives.split(",")) if isinstance(objectives, str) else len(objectives)
    if pruner == "auto":
        return "hyperband" if fitness == "standalone" and n_objectives == 1 else "none"
    if pruner != "none" and n_objectives > 1:
        # Optuna's trial.report is single-objective only.
        raise UniTuneError(f"{where}.pruner: {pruner!r} needs the single objective 'acc' "
                           f"(Optuna prunes single-objective studies only); use pruner none with acc,params")
    return pruner


def make_pruner(name: str, max_step: int) -> BasePruner:
    """Optuna's pruner ``name`` (resolved, not ``auto``) for trials of ``max_step`` steps."""
    if name == "sha":
        return SuccessiveHalvingPruner(min_resource=1, reduction_factor=REDUCTION_FACTOR, min_early_stopping_rate=0)
    if name == "hyperband":
        return HyperbandPruner(min_resource=1, max_resource=max(1, int(max_step)), reduction_factor=REDUCTION_FACTOR)
    if name == "none":
        return NopPruner()
    raise UniTuneError(f"search.pruner: expected one of {list(PRUNERS[1:])}, got {name!r}")


