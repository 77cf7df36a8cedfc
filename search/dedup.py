"""No subnet is evaluated twice in a study, with one worker or many (issue 15).

Different proposals often repair to the same subnet, samplers re-propose points, and several
workers sample at the same time, so without a check a study spends trials on subnets it has
already evaluated. Two checks, both through Optuna's public trial API (``study.get_trials``):

1. **Before** a proposal is stored, :class:`~.sampler.RepairSampler` asks again when the
   repaired subnet is already held by a COMPLETE, PRUNED, RUNNING or WAITING trial (see there). We ask
   again rather than reuse the stored value: a trial that reused a value would be a second
   COMPLETE trial of one subnet, which teaches the sampler nothing new and spends a slot of
   ``n_trials``; asking again costs a few sampler calls and keeps distinct subnets == COMPLETE
   trials.
2. **After** its parameters are stored, and before anything is evaluated, the objective looks
   again (:func:`duplicate_of`). Two workers may sample the same subnet at the same moment,
   each before the other has stored it; since each one stores its parameters *before* it looks,
   at least one of the two always sees the other, and a sampled trial that sees another trial
   holding its subnet fails at once as ``duplicate`` (never evaluated; its slot goes to the next
   trial). Rarely both see each other and both step back: a subnet is then lost for now, but
   never evaluated twice. An enqueued trial (a seed or a retry) is held from the moment it is
   enqueued, so a sampled trial always sees it and steps back for it; an enqueued trial steps
   back only for a COMPLETE one.

Optuna has no atomic "claim these parameters" operation on its storages (no compare-and-set on
attributes), which is why the check is two-sided instead of a lock; file storages could lock,
server databases on several machines cannot share that lock.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import optuna
from optuna.trial import FrozenTrial, TrialState

DUPLICATE = "duplicate"
# A PRUNED trial holds its subnet too: its partial evaluation is final (the fitness is
# deterministic, so a second try would report the same figures), and it is never the best.
HOLDING = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
# Trials that count towards ``n_trials``: evaluated, to the end or until pruned.
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)

Key = tuple[tuple[str, int], ...]


def params_key(params: Mapping[str, Any], names: Iterable[str]) -> Key | None:
    """A hashable key of a complete set of parameters; None if any of ``names`` is missing."""
    try:
        return tuple((name, int(params[name])) for name in names)
    except KeyError:
        return None


def trial_params(trial: FrozenTrial) -> Mapping[str, Any]:
    """What a trial holds: its enqueued ``fixed_params`` (a WAITING trial has no params yet), else
    its stored params."""
    return trial.system_attrs.get("fixed_params") or trial.params


def is_enqueued(trial: FrozenTrial) -> bool:
    return bool(trial.system_attrs.get("fixed_params"))


def held_keys(study: optuna.Study, names: tuple[str, ...], exclude: int | None = None) -> set[Key]:
    """Keys of the subnets held by COMPLETE, PRUNED, RUNNING or WAITING trials (other than ``exclude``)."""
    keys = set()
    for t in study.get_trials(deepcopy=False, states=HOLDING):
        if t.number != exclude:
            key = params_key(trial_params(t), names)
            if key is not None:
                keys.add(key)
    return keys


def duplicate_of(study: optuna.Study, number: int, names: tuple[str, ...]) -> int | None:
    """The number of another trial that holds the subnet of trial ``number`` and that this trial
    must step back for (see the module docstring), or None."""
    trials = study.get_trials(deepcopy=False, states=HOLDING)
    own = next((t for t in trials if t.number == number), None)
    key = params_key(own.params, names) if own is not None else None
    if key is None:
        return None
    enqueued = is_enqueued(own)
    for t in trials:
        if t.number == number or params_key(trial_params(t), names) != key:
            continue
        if not enqueued or t.state == TrialState.COMPLETE:
            return t.number
    return None
