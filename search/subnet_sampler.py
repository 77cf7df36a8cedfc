"""The base of unitune's samplers that draw a whole subnet at once (:class:`~.sampler.RepairSampler`,
:class:`~.evolution.EvolutionSampler`).

Optuna asks a sampler for ``infer_relative_search_space`` once per trial, then ``sample_relative``
over it, and every later ``suggest_*`` of a name in that space takes the relative value (see
:mod:`.sampler`). A subnet sampler therefore declares its whole static space (:meth:`relative_space`)
as the relative one and fills it in one :meth:`sample_subnet` call: propose, repair to the budget,
and propose again while a trial already holds the result (:meth:`repair_until_new`). What it did is
written to the trial's system attributes, through the storage, since a sampler is handed a
``FrozenTrial`` with no setters (:func:`~.storage.trial_storage`).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial

from unitune.supernet.encoding import SubnetEncoding
from unitune.supernet.repair import repair_indices

from .storage import trial_storage


class SubnetSamplerBase(BaseSampler):
    """A sampler of whole subnets of ``encoding`` within ``budget`` parameters. Subclasses say
    which distributions they propose in (:meth:`relative_space`) and draw the subnet
    (:meth:`sample_subnet`)."""

    def __init__(self, encoding: SubnetEncoding, budget: int):
        self.encoding = encoding
        self.budget = budget

    def relative_space(self) -> dict[str, BaseDistribution]:
        """The distributions of every searched position (as sizes or as indices)."""
        raise NotImplementedError

    def sample_subnet(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The trial's subnet (one value per name of ``search_space``) and the system attributes
        to record on the trial (key -> value, written in that order)."""
        raise NotImplementedError

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return dict(self.relative_space())

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        subnet, attrs = self.sample_subnet(study, trial, search_space)
        storage, trial_id = trial_storage(study, trial.number)  # a FrozenTrial has no setter
        for key, value in attrs.items():
            storage.set_trial_system_attr(trial_id, key, value)
        return subnet

    def repair_until_new(
        self,
        propose: Callable[[int], Mapping[str, int]],
        attempts: int,
        held: Callable[[dict[str, int]], bool],
        seed: Callable[[int], int | Sequence[int]] = lambda attempt: 0,
    ) -> tuple[dict[str, int], int, int]:
        """Repair ``propose(attempt)`` (indices) to the budget, seeded with ``seed(attempt)``, for
        attempt 0, 1, ... until the result is not ``held`` or ``attempts`` are spent (the last one
        is kept then). Returns the repaired indices, the repair's steps and the last attempt."""
        for attempt in range(attempts):
            indices, steps = repair_indices(self.encoding, propose(attempt), self.budget, seed=seed(attempt))
            if not held(indices):
                break
        return indices, steps, attempt
