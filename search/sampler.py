"""Samplers by name, each wrapped so that what Optuna stores is the repaired, feasible subnet.

How the wrapper works with Optuna 5.0 (``optuna/trial/_trial.py``): on a trial's first
``suggest_*`` of a parameter that is neither fixed (enqueued) nor already set, the trial asks
its sampler once for ``infer_relative_search_space`` and ``sample_relative``; every later
``suggest_*`` of a name in that relative space takes the relative value instead of calling
``sample_independent``, and that value is what ``storage.set_trial_param`` records.

:class:`RepairSampler` therefore declares the whole static space as its relative space, and
its ``sample_relative`` builds one complete proposal from the base sampler (the base's own
relative sample over whatever part of the space the base treats jointly, plus the base's
``sample_independent`` for the rest), repairs it (:mod:`.repair`), and returns the repaired
dict. Every suggest then takes the repaired value, so the stored params are exactly the subnet
that is evaluated, and every stored trial is within budget. Samplers learn from the stored
(repaired) params, a Lamarckian scheme: CMA-ES is told the repaired point, TPE/GP/NSGA-II
model the repaired configurations.

The repair is seeded with ``(seed, trial number, attempt)``, ``seed`` being the worker's
sampler seed (:mod:`.seeds`), so a trial's repair can be replayed. A repaired subnet that a
COMPLETE, RUNNING or WAITING trial already holds is not stored: the sampler is asked again
(:mod:`.dedup` says why asking again rather than reusing the value). TPE, GP and random
sampling draw a fresh proposal on every call, so they are asked again up to
``BASE_RETRIES`` times; CMA-ES, NSGA-II and the evolution sampler keep per-trial state
(a generation, parents) that a second call would overwrite, so for them, and after those
retries, the next proposals are uniform random indices, repaired (what random search would
try). After ``MAX_ATTEMPTS`` the last proposal is returned and the objective fails the trial
as a duplicate (a space nearly exhausted under the budget).

Enqueued trials (seed subnets, retried trials) bypass samplers in Optuna; the search checks
those against the budget itself. Optuna's soft constraints are not used at all.

**Sizes stored, indices sampled.** The study stores each parameter as its size (a
``CategoricalDistribution`` of the sizes, for the dashboard: :mod:`.encoding`), but a categorical
is unordered to TPE and GP, and CMA-ES does not sample categoricals at all (Optuna hands them to
its independent, random sampler). So the base sampler is handed :class:`IndexView`, the study
as it would look had it stored indices (``IntDistribution(0, n - 1)``, a larger index a larger
module): the base proposes indices, the repair works on indices, and the wrapper returns sizes.
Every sampler thus models the ordered variable it modelled before sizes were stored. The view
is the real study for everything but its trials; Optuna's samplers read trials through
``Study._get_trials`` (private), so the view answers that name too, with public calls only.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, Callable, Container, Sequence

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.exceptions import ExperimentalWarning
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from unitune.engine.config import SAMPLERS  # noqa: F401 (the config declares the sampler names; part of this API)
from unitune.errors import UniTuneError

from .dedup import held_keys, params_key
from unitune.supernet.encoding import SubnetEncoding
from .storage import WORKER_ATTR, trial_storage, worker_token
from .subnet_sampler import SubnetSamplerBase

SINGLE_OBJECTIVE = ("cmaes", "evolution")
REPAIR_STEPS_ATTR = "unitune:repair_steps"
RESAMPLED_ATTR = "unitune:resampled"  # proposals dropped because their subnet was already held
BASE_RETRIES = 4
MAX_ATTEMPTS = 64
# Samplers whose sample_relative / sample_independent keep no per-trial state: safe to ask twice.
_REASKABLE = (optuna.samplers.TPESampler, optuna.samplers.RandomSampler, optuna.samplers.GPSampler)


class IndexView:
    """``study`` as its base sampler sees it: each searched parameter an index into its choices
    (see the module docstring). Trials are converted copies (their ids, attributes and values
    kept, so a sampler's writes through the storage still land on the real trial); everything
    else is the real study's."""

    def __init__(self, study: Study, encoding: SubnetEncoding):
        self._study = study
        self._encoding = encoding
        self._index = {p.name: {size: i for i, size in enumerate(p.choices)} for p in encoding.positions}
        self._cached: list[FrozenTrial] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def frozen(self, trial: FrozenTrial) -> FrozenTrial:
        """A trial with its searched parameters as indices (a stored size outside the choices is
        left as it is, which the base sampler then sees as out of its range)."""
        if not any(name in self._index for name in trial.params):
            return trial
        out = copy.copy(trial)
        distributions = dict(trial.distributions)
        params = dict(trial.params)
        for name, value in trial.params.items():
            index = self._index.get(name, {}).get(value)
            if index is not None and distributions.get(name) == self._encoding.distributions[name]:
                params[name] = index
                distributions[name] = self._encoding.index_distributions[name]
        out.distributions = distributions
        out.params = params
        return out

    def get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        return [self.frozen(t) for t in self._study.get_trials(deepcopy=deepcopy, states=states)]

    def _get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None,
                    use_cache: bool = False) -> list[FrozenTrial]:
        # What Optuna's samplers call. ``use_cache``, as in Optuna's Study: the trials read once
        # while this trial is sampled (a view lives for one sampler call), sparing storage reads.
        if not use_cache:
            return self.get_trials(deepcopy=deepcopy, states=states)
        if self._cached is None:
            self._cached = self.get_trials(deepcopy=False)
        return [t for t in self._cached if states is None or t.state in states]

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


class RepairSampler(SubnetSamplerBase):
    """Wrap ``base`` so every sampled subnet is repaired to fit ``budget`` before it is stored."""

    def __init__(self, base: BaseSampler, encoding: SubnetEncoding, budget: int, seed: int | None = None):
        if encoding.cost is None:
            raise ValueError("RepairSampler needs an encoding built with backbone dimensions")
        super().__init__(encoding, budget)
        self.base = base
        self.seed = 0 if seed is None else int(seed)

    def __str__(self) -> str:
        return f"RepairSampler({self.base})"

    def relative_space(self) -> dict[str, BaseDistribution]:
        return self.encoding.distributions  # the sizes, as the study stores them

    def sample_subnet(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        encoding, names = self.encoding, self.encoding.names
        held = held_keys(study, names, exclude=trial.number)
        reask = isinstance(self.base, _REASKABLE)
        rng = np.random.default_rng((self.seed, trial.number))
        view = IndexView(study, encoding)
        index_space = {name: encoding.index_distributions[name] for name in search_space if name in encoding.index_distributions}

        def propose(attempt: int) -> dict[str, int]:
            if attempt == 0 or (reask and attempt <= BASE_RETRIES):
                return self._base_proposal(view, view.frozen(trial), index_space)
            return {name: int(rng.integers(d.low, d.high + 1)) for name, d in encoding.index_distributions.items()}

        indices, steps, attempt = self.repair_until_new(
            propose, MAX_ATTEMPTS, lambda indices: params_key(encoding.from_indices(indices), names) in held,
            seed=lambda attempt: (self.seed, trial.number, attempt))
        return encoding.from_indices(indices), {REPAIR_STEPS_ATTR: steps, RESAMPLED_ATTR: attempt}

    def _base_proposal(self, study: Any, trial: FrozenTrial, search_space: dict[str, BaseDistribution]) -> dict[str, int]:
        """The base sampler's proposal, as indices, asked through the :class:`IndexView` ``study``."""
        # The base's own joint space (empty for independent TPE, the intersection of past trials
        # for multivariate TPE / CMA-ES / GP / NSGA-II), restricted to ours.
        base_space = {
            name: dist
            for name, dist in self.base.infer_relative_search_space(study, trial).items()
            if search_space.get(name) == dist
        }
        proposal = self.base.sample_relative(study, trial, base_space) if base_space else {}
        proposal = {name: value for name, value in proposal.items() if name in search_space}
        for name, dist in search_space.items():
            if name not in proposal:
                proposal[name] = self.base.sample_independent(study, trial, name, dist)
        return {name: int(value) for name, value in proposal.items()}

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        # Only reached for a name outside the static space (not suggested by unitune's objective).
        return self.base.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        # The worker's token, first thing: the parameters are stored while the trial is sampled,
        # before the objective runs, and a RUNNING trial with parameters but no token can never
        # be proven dead, so a worker killed in between would hold a slot of --trials for good.
        # (A sampler hook gets a FrozenTrial: writing its attributes needs the storage itself.)
        storage, trial_id = trial_storage(study, trial.number)
        storage.set_trial_user_attr(trial_id, WORKER_ATTR, worker_token())
        view = IndexView(study, self.encoding)
        self.base.before_trial(view, view.frozen(trial))

    def after_trial(
        self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        view = IndexView(study, self.encoding)
        self.base.after_trial(view, view.frozen(trial), state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()


def make_base_sampler(
    name: str,
    encoding: SubnetEncoding,
    budget: int,
    *,
    seed: int | None = None,
    n_objectives: int = 1,
    **options: Any,
) -> BaseSampler:
    """The unwrapped Optuna sampler for ``name``; ``options`` go to its constructor."""
    if name not in SAMPLERS:
        raise UniTuneError(f"sampler: unknown sampler {name!r}, expected one of {list(SAMPLERS)}")
    if n_objectives > 1 and name in SINGLE_OBJECTIVE:
        raise UniTuneError(
            f"sampler: {name!r} optimises a single objective; for the accuracy/parameters Pareto front "
            "use tpe, nsga2, gp or random"
        )
    factories: dict[str, Callable[..., BaseSampler]] = {
        # Multivariate TPE models the joint distribution of the per-block choices; the constant
        # liar keeps parallel workers from proposing the same point.
        "tpe": lambda **kw: optuna.samplers.TPESampler(
            **{"multivariate": True, "constant_liar": True, "seed": seed, **kw}
        ),
        "cmaes": lambda **kw: optuna.samplers.CmaEsSampler(**{"seed": seed, **kw}),
        "gp": lambda **kw: optuna.samplers.GPSampler(**{"seed": seed, **kw}),
        "nsga2": lambda **kw: optuna.samplers.NSGAIISampler(**{"seed": seed, **kw}),
        "random": lambda **kw: optuna.samplers.RandomSampler(**{"seed": seed, **kw}),
    }
    if name == "evolution":
        from .evolution import EvolutionSampler

        return EvolutionSampler(encoding, budget, seed=seed, **options)
    if name == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise UniTuneError("sampler: 'cmaes' needs the cmaes package (pip install cmaes)") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        try:
            return factories[name](**options)
        except TypeError as e:
            raise UniTuneError(f"sampler: bad option for {name!r}: {e}") from None


def make_sampler(
    name: str | BaseSampler,
    encoding: SubnetEncoding,
    budget: int,
    *,
    seed: int | None = None,
    n_objectives: int = 1,
    **options: Any,
) -> RepairSampler:
    """A :class:`RepairSampler` around the sampler ``name`` (or around a given Optuna sampler);
    ``seed`` seeds both the base sampler and the repair."""
    base = name if isinstance(name, BaseSampler) else make_base_sampler(
        name, encoding, budget, seed=seed, n_objectives=n_objectives, **options
    )
    return RepairSampler(base, encoding, budget, seed=seed)
