"""A NOAH-style evolutionary search as an Optuna sampler, with repair instead of rejection.

NOAH (``evolution.py`` of the NOAH release, after AutoFormer) runs generations of 50
candidates: a random first population, then each generation 25 mutations and 25 crossovers of
the top-10 candidates seen so far; a method's configuration mutates with probability
``m_prob = 0.2`` and then its depth is redrawn with probability ``s_prob = 0.4``; crossover takes
each method's whole configuration from one of two parents; candidates over the budget or
already evaluated are rejected and redrawn.

Here the same loop lives inside Optuna and is derived from the study's history alone, so it
resumes after a restart and several workers can share it:

- Generation ``g`` of a new trial is ``(COMPLETE trials so far) // population_size``.
  Generation 0 is random. The parents of generation ``g >= 1`` are the ``n_parents`` best of
  the first ``g * population_size`` complete trials (NOAH's running top-k).
- A trial's role follows its number within a generation-sized cycle: the first
  ``n_mutation`` slots mutate, the next ``n_crossover`` cross over, any rest are random.
- Mutation: pick a parent; for each method (lora, adapter, vpt, ssf) with probability
  ``mutation_prob`` mutate it, redrawing each block's choice with probability
  ``resample_prob``; the global SSF is redrawn with probability ``mutation_prob``. NOAH's
  methods are "on in the first n blocks", so its ``s_prob`` redraws that n; per-block choices
  are the analogue here.
- Crossover: pick two parents; each method's per-block list (and the global SSF) comes whole
  from one of them, as in NOAH.
- Every candidate is repaired to the budget (instead of rejected); a repaired candidate that
  a trial of the study already holds is redrawn, up to ``max_attempts`` times, then replaced
  by random candidates (again up to ``max_attempts``), as NOAH fills a short generation.

Trials whose role is random, or whose generation has too few parents, are drawn uniformly and
repaired. The sampler is single-objective (as NOAH's search is).

It works on indices into each position's choices: :func:`~.sampler.make_sampler` wraps it in
the :class:`~.sampler.RepairSampler`, which hands it the study as indices (``IndexView``) and
stores the sizes.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from unitune.errors import UniTuneError
from unitune.supernet.methods import METHODS

from unitune.supernet.encoding import SubnetEncoding
from .subnet_sampler import SubnetSamplerBase

ROLE_ATTR = "unitune:evolution"


class EvolutionSampler(SubnetSamplerBase):
    def __init__(
        self,
        encoding: SubnetEncoding,
        budget: int,
        *,
        population_size: int = 50,
        n_parents: int = 10,
        n_mutation: int = 25,
        n_crossover: int = 25,
        mutation_prob: float = 0.2,
        resample_prob: float = 0.4,
        max_attempts: int = 10,
        seed: int | None = None,
    ):
        if population_size < 1 or n_parents < 1 or n_mutation < 0 or n_crossover < 0:
            raise UniTuneError(
                "sampler: evolution needs population_size >= 1, n_parents >= 1, n_mutation >= 0, n_crossover >= 0"
            )
        if n_mutation + n_crossover > population_size:
            raise UniTuneError(
                f"sampler: evolution n_mutation + n_crossover ({n_mutation + n_crossover}) "
                f"exceeds population_size ({population_size})"
            )
        for key, p in (("mutation_prob", mutation_prob), ("resample_prob", resample_prob)):
            if not 0.0 <= p <= 1.0:
                raise UniTuneError(f"sampler: evolution {key} must be in [0, 1], got {p}")
        super().__init__(encoding, budget)
        self.population_size = population_size
        self.n_parents = n_parents
        self.n_mutation = n_mutation
        self.n_crossover = n_crossover
        self.mutation_prob = mutation_prob
        self.resample_prob = resample_prob
        self.max_attempts = max(1, max_attempts)
        self._rng = np.random.RandomState(seed)
        # Positions grouped by method: the unit NOAH mutates and crosses over.
        self._groups: dict[str, list[str]] = {}
        for p in encoding.positions:
            self._groups.setdefault(p.method, []).append(p.name)
        self._sizes = {p.name: len(p.choices) for p in encoding.positions}

    def reseed_rng(self) -> None:
        self._rng.seed()

    def relative_space(self) -> dict[str, BaseDistribution]:
        return self.encoding.index_distributions  # the RepairSampler hands it the study as indices

    def sample_subnet(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        if len(study.directions) != 1:
            raise UniTuneError("sampler: 'evolution' optimises a single objective")
        trials = study.get_trials(deepcopy=False)
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        generation = len(complete) // self.population_size
        parents = self._parents(complete[: generation * self.population_size], study.direction)
        slot = trial.number % self.population_size
        if not parents:
            role = "random"
        elif slot < self.n_mutation:
            role = "mutation"
        elif slot < self.n_mutation + self.n_crossover:
            role = "crossover"
        else:
            role = "random"
        seen = {self._key(t.params) for t in trials if t.number != trial.number and self._complete(t.params)}
        # NOAH redraws a candidate the study already holds; when its role keeps producing
        # known ones (a budget-tight parent mutated and repaired back onto itself), it falls
        # back to random candidates, as NOAH fills a short generation with random ones.
        def role_at(attempt: int) -> str:
            return "random" if attempt >= self.max_attempts else role

        candidate, _, attempt = self.repair_until_new(
            lambda attempt: self._propose(role_at(attempt), parents), 2 * self.max_attempts,
            lambda candidate: self._key(candidate) in seen)
        return candidate, {ROLE_ATTR: f"{role_at(attempt)}@{generation}"}

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        # Only for names outside the static space; unitune's objective never asks.
        from optuna.samplers import RandomSampler

        return RandomSampler(seed=int(self._rng.randint(2**31))).sample_independent(
            study, trial, param_name, param_distribution
        )

    # ---- the genetic operators ---------------------------------------------------------------

    def _parents(self, trials: Sequence[FrozenTrial], direction: StudyDirection) -> list[dict[str, int]]:
        sign = -1.0 if direction == StudyDirection.MAXIMIZE else 1.0
        ranked = sorted(
            (t for t in trials if self._complete(t.params)), key=lambda t: (sign * float(t.value), t.number)
        )
        return [dict(t.params) for t in ranked[: self.n_parents]]

    def _complete(self, params: dict[str, Any]) -> bool:
        return all(name in params for name in self.encoding.names)

    def _key(self, params: dict[str, Any]) -> tuple[int, ...]:
        return tuple(int(params[name]) for name in self.encoding.names)

    def _random(self) -> dict[str, int]:
        return {name: int(self._rng.randint(n)) for name, n in self._sizes.items()}

    def _propose(self, role: str, parents: list[dict[str, int]]) -> dict[str, int]:
        if role == "mutation":
            return self._mutate(parents[self._rng.randint(len(parents))])
        if role == "crossover":
            if len(parents) == 1:
                return self._mutate(parents[0])
            i, j = self._rng.choice(len(parents), size=2, replace=False)
            return self._crossover(parents[i], parents[j])
        return self._random()

    def _mutate(self, parent: dict[str, int]) -> dict[str, int]:
        child = {name: int(parent[name]) for name in self.encoding.names}
        for method, declared in METHODS.items():  # registry order
            names = self._groups.get(method, [])
            if not names or self._rng.rand() >= self.mutation_prob:
                continue
            for name in names:
                # a model-level method (ssf_global) is one choice: resampled whenever its group is
                if declared.site == "model" or self._rng.rand() < self.resample_prob:
                    child[name] = int(self._rng.randint(self._sizes[name]))
        return child

    def _crossover(self, a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
        child: dict[str, int] = {}
        for method, names in self._groups.items():
            source = a if self._rng.rand() < 0.5 else b
            child.update({name: int(source[name]) for name in names})
        return child
