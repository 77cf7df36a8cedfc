"""Run a budget-constrained search: create or join a study, enqueue seeds, run workers to a global cap.

Starting :func:`run_search` again with the same storage and study name joins that study (as a
restart after a crash, or as one more worker on this or another machine): ``n_trials`` is the
number of COMPLETE trials the *study* should end with, counted in the storage, not per process.

How the count stays exact with several workers and killed ones:

- before each trial a worker fails and re-enqueues the trials of dead workers
  (:func:`recover_dead_trials`; heartbeats do the same on a server database), then stops if the
  study's COMPLETE plus RUNNING trials already reach ``n_trials``;
- inside a trial, before anything is sampled, a worker that lost the race for the last slot
  (COMPLETE + RUNNING trials numbered before it >= ``n_trials``) fails that empty trial as
  ``surplus``, hands back any enqueued parameters it popped, and stops (:class:`SubnetObjective`);
- a trial failed by a non-finite accuracy, or failed unevaluated as a ``duplicate`` of a subnet
  another trial holds (:mod:`.dedup`), leaves its slot free, so some worker runs another.

So the study reaches exactly ``n_trials`` finished trials (COMPLETE, or PRUNED with a pruner:
:mod:`.pruning`) once every worker has stopped and no
RUNNING trial of a dead worker is left unrecovered (a worker killed on another host without
heartbeats needs one more run of the search from any host after its death is known, or a
server database with heartbeats).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.samplers import BaseSampler
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

import unitune
from unitune.engine.config import OBJECTIVES, objective_names
from unitune.engine.context import RunLayout
from unitune.errors import UniTuneError
from unitune.supernet import BackboneDims, SearchSpace, Subnet

from unitune.supernet.budget import check_budget, parse_budget
from .dedup import DUPLICATE, FINISHED
from unitune.supernet.encoding import SubnetEncoding, check_stored_format
from .notes import set_metric_names
from .objective import SubnetObjective
from .pruning import make_pruner
from .ranking import best_trial
from .sampler import make_sampler
from .seeds import SINGLE_SOURCE, draw_seed, single_method_subnets, worker_seed
from .storage import (close_storage, open_storage, recover_dead_trials, requeue_trial, resolve_storage, storage_lock,
                      stored_trial, worker_token)

_logger = logging.getLogger("unitune.search")

DIRECTIONS = {"acc": "maximize", "params": "minimize"}
VALID_OBJECTIVES = OBJECTIVES  # the config's vocabulary (unitune/engine/config.py)
# Study user attributes that must agree when a run joins an existing study.
CHECKED_ATTRS = ("budget", "objectives", "depth", "space", "backbone")


def parse_objectives(objectives: Sequence[str] | str) -> tuple[str, ...]:
    return objective_names(objectives)


def check_search_settings(
    space: SearchSpace,
    dims: BackboneDims,
    budget: int | str,
    *,
    n_trials: int,
    objectives: Sequence[str] | str = ("acc",),
    sampler: str | BaseSampler = "tpe",
    seed: int | None = None,
    seed_subnets: Sequence[Subnet | str | os.PathLike] = (),
    backbone: str | None = None,
    backbone_params: int | None = None,
    storage: str | os.PathLike | BaseStorage | None = None,
    sampler_options: Mapping[str, Any] | None = None,
) -> int:
    """Validate everything a user gives a search, touching no storage and loading nothing heavy;
    return the budget as a parameter count (:func:`prepare_search` keeps the rest).

    ``dims`` may come from a backbone built on the meta device, so a typo in a budget, a sampler
    name, a seed subnet or a storage URL is reported in seconds, before a supernet and its
    validation images are loaded. :func:`run_search` calls it first as well.
    """
    return prepare_search(space, dims, budget, n_trials=n_trials, objectives=objectives, sampler=sampler, seed=seed,
                          seed_subnets=seed_subnets, backbone=backbone, backbone_params=backbone_params,
                          storage=storage, sampler_options=sampler_options).budget


@dataclass(frozen=True)
class PreparedSearch:
    """A search's settings as :func:`prepare_search` checked them: what :func:`run_search` uses
    without checking (or building) them again."""

    budget: int
    objectives: tuple[str, ...]
    encoding: SubnetEncoding
    seeds: list[dict[str, int]]


def prepare_search(
    space: SearchSpace,
    dims: BackboneDims,
    budget: int | str,
    *,
    n_trials: int,
    objectives: Sequence[str] | str = ("acc",),
    sampler: str | BaseSampler = "tpe",
    seed: int | None = None,
    seed_subnets: Sequence[Subnet | str | os.PathLike] = (),
    backbone: str | None = None,
    backbone_params: int | None = None,
    storage: str | os.PathLike | BaseStorage | None = None,
    sampler_options: Mapping[str, Any] | None = None,
) -> PreparedSearch:
    """:func:`check_search_settings`, keeping what it prepared: the budget as a count, the
    objectives, the encoding and the seed subnets' parameters. The sampler is built once here to
    check its name and options; :func:`run_search` builds the one it uses with the seed of its
    worker, known only once the study is joined."""
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise UniTuneError(f"n_trials: expected a positive integer, got {n_trials!r}")
    parsed = parse_objectives(objectives)
    if not isinstance(budget, int) or isinstance(budget, bool):
        budget = parse_budget(budget, backbone_params)
    check_budget(budget, space, dims)
    encoding = SubnetEncoding(space, dims.depth, dims)
    seeds = prepare_seeds(seed_subnets, encoding, budget, backbone=backbone)
    make_sampler(sampler, encoding, budget, seed=seed, n_objectives=len(parsed), **dict(sampler_options or {}))
    if not isinstance(storage, BaseStorage):
        resolve_storage(storage)
    return PreparedSearch(budget, parsed, encoding, seeds)


@dataclass
class SearchResult:
    study: optuna.Study
    storage: str  # the storage, as a person or optuna-dashboard would name it
    n_complete: int
    best_trial: FrozenTrial | None
    best_subnet: Subnet | None


def study_encoding(study: optuna.Study, dims: BackboneDims | None = None) -> SubnetEncoding:
    """The encoding a unitune study was created with (from its user attributes)."""
    attrs = study.user_attrs
    if "space" not in attrs or "depth" not in attrs:
        raise UniTuneError(f"study {study.study_name!r}: not a unitune study (no 'space'/'depth' attributes)")
    space = SearchSpace.from_dict(attrs["space"], source=f"study {study.study_name!r}: space")
    return SubnetEncoding(space, int(attrs["depth"]), dims)


def prepare_seeds(
    seed_subnets: Sequence[Subnet | str | os.PathLike],
    encoding: SubnetEncoding,
    budget: int,
    backbone: str | None = None,
) -> list[dict[str, int]]:
    """Validate seed subnets against the backbone, depth, space and budget; their params dicts."""
    out = []
    for i, seed in enumerate(seed_subnets):
        if isinstance(seed, Subnet):
            subnet, source = seed, f"seed subnet {i}"
        else:
            subnet, source = Subnet.load(seed, depth=encoding.depth), str(seed)
        if backbone and subnet.backbone and subnet.backbone != backbone:
            raise UniTuneError(f"{source}: is a subnet of {subnet.backbone!r}, but the search is on {backbone!r}")
        params = encoding.encode(subnet, source=source)
        n = encoding.n_params(params)
        if n > budget:
            raise UniTuneError(f"{source}: has {n} trainable parameters, over the budget of {budget}")
        out.append(params)
    return out


def _study_attrs(encoding: SubnetEncoding, budget: int, objectives: tuple[str, ...], extra: Mapping[str, Any]) -> dict:
    attrs = {
        "budget": budget,
        "objectives": list(objectives),
        "depth": encoding.depth,
        "space": encoding.space.to_dict(),
        "unitune_version": unitune.__version__,
    }
    for key, value in extra.items():
        attrs.setdefault(key, value)
    return attrs


def _check_or_record_attrs(study: optuna.Study, attrs: Mapping[str, Any], url: str) -> None:
    existing = study.user_attrs
    if "budget" not in existing:
        if study.get_trials(deepcopy=False):
            raise UniTuneError(f"storage {url}: study {study.study_name!r} exists but was not created by unitune")
        for key, value in attrs.items():
            study.set_user_attr(key, value)
        return
    for key in CHECKED_ATTRS:
        if key in existing and key in attrs and existing[key] != attrs[key]:
            raise UniTuneError(
                f"storage {url}: study {study.study_name!r} was created with {key}={existing[key]!r}, "
                f"not {attrs[key]!r}; use another study name to search with different settings"
            )
    for key, value in attrs.items():  # attributes added since (e.g. a note) are filled in
        if key not in existing:
            study.set_user_attr(key, value)


def _register_worker(study: optuna.Study, base_seed: int) -> tuple[int, int]:
    """Take the next worker number of ``study`` and record it with its sampler seed (user
    attribute ``worker.NNN``); (number, seed). Run under :func:`storage_lock`: on a file storage
    no two workers get one number. On a server database, workers on several machines that start
    in the same instant may share a number (Optuna offers no atomic counter); they then share a
    seed, and the duplicate checks (:mod:`.dedup`) still keep them from evaluating one subnet twice."""
    taken = {key for key in study.user_attrs if key.startswith("worker.")}
    index = 0
    while f"worker.{index:03d}" in taken:
        index += 1
    own = worker_seed(base_seed, index)
    study.set_user_attr(f"worker.{index:03d}", {"worker": worker_token(), "seed": own, "study_seed": base_seed})
    return index, own


def count_states(study: optuna.Study) -> tuple[int, int]:
    """(finished, RUNNING) trials of the study, all workers included; finished is COMPLETE or
    PRUNED (a pruned trial was evaluated, only more cheaply: it takes its slot of ``n_trials``)."""
    trials = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
    finished = sum(t.state in FINISHED for t in trials)
    return finished, len(trials) - finished


@contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Silence Optuna's per-trial log lines (all 4 x depth parameters each); the progress bar
    and unitune's own log (``unitune.search``) report instead."""
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(previous)


class _Progress:
    """A tqdm bar over the study's COMPLETE trials, with the best feasible accuracy so far.

    Trials already in the study when this worker starts (a rerun, another worker's) count as the
    bar's start, not as work done here, or a rerun would report thousands of trials a second.
    Not on a terminal: no bar, a line every tenth of the trials (the style of
    :mod:`unitune.progress`)."""

    def __init__(self, total: int, enabled: bool):
        from tqdm import tqdm

        from unitune.progress import is_terminal

        self.bar_shown = enabled and is_terminal()
        self.enabled = enabled
        self.every = max(1, total // 10)
        self.last_line: int | None = None
        self.bar = tqdm(total=total, disable=not self.bar_shown, desc="search", unit="trial", dynamic_ncols=True,
                        leave=False)
        self.started: int | None = None

    def update(self, study: optuna.Study) -> None:
        finished = study.get_trials(deepcopy=False, states=FINISHED)  # pruned trials take a slot too
        complete = [t for t in finished if t.state == TrialState.COMPLETE]
        n = min(len(finished), self.bar.total)
        best = max((t.values[0] for t in complete), default=None)  # every stored trial is within budget
        if self.started is None:  # the first look: what was there before this worker
            self.started = n
            self.bar.reset(total=self.bar.total)
            self.bar.initial = n
        self.bar.n = n
        if best is not None:
            self.bar.set_postfix_str(f"best acc {best:.4f}", refresh=False)
        self.bar.refresh()
        if self.enabled and not self.bar_shown and n != self.last_line \
                and (n % self.every == 0 or n == self.bar.total) and n > self.started:
            self.last_line = n
            print(f"[search] {n}/{self.bar.total} trials"
                  + (f"  best acc {best:.4f}" if best is not None else ""), file=sys.stderr, flush=True)

    def close(self) -> None:
        shown = self.bar_shown and self.bar.n > (self.started or 0)
        self.bar.close()
        if shown:  # the bar leaves no line (leave=False): one for the scrollback, as off a terminal
            best = self.bar.postfix or ""
            print(f"[search] {self.bar.n}/{self.bar.total} trials" + (f"  {best}" if best else ""),
                  file=sys.stderr, flush=True)


def run_search(
    evaluate: Callable[[Subnet], float],
    space: SearchSpace,
    dims: BackboneDims,
    budget: int | str,
    n_trials: int,
    storage: str | os.PathLike | BaseStorage | None = None,
    study_name: str = "unitune",
    sampler: str | BaseSampler = "tpe",
    seed: int | None = None,
    objectives: Sequence[str] | str = ("acc",),
    seed_subnets: Sequence[Subnet | str | os.PathLike] = (),
    study_attrs: Mapping[str, Any] | None = None,
    progress: bool = True,
    *,
    backbone_params: int | None = None,
    sampler_options: Mapping[str, Any] | None = None,
    timeout: float | None = None,
    heartbeat_interval: int = 60,
    grace_period: int | None = None,
    stale_after: float = 300.0,
    max_retries: int = 3,
    single_methods: bool = True,
    pruner: str = "none",
    prepared: PreparedSearch | None = None,
) -> SearchResult:
    """Search subnets of ``space`` on a backbone ``dims`` under ``budget`` until the study holds
    ``n_trials`` COMPLETE trials.

    ``evaluate(subnet) -> accuracy in [0, 1]`` is the fitness (validation accuracy with weights
    inherited from the supernet). ``budget`` is a count or a string for :func:`parse_budget`
    (a percentage needs ``backbone_params``). ``storage``: see :func:`open_storage`. ``sampler``:
    one of :data:`SAMPLERS` (``sampler_options`` go to its constructor; e.g. ``population_size``
    for ``nsga2``/``evolution``, ``n_startup_trials`` for ``tpe``/``gp``) or an Optuna sampler,
    wrapped either way by :class:`RepairSampler`. When joining a study that has trials, the
    sampler seed is offset by their count so a restarted worker does not replay its proposals.
    ``study_attrs`` (e.g. ``backbone``, ``supernet``) are recorded on a new study; ``backbone``
    must match on an existing one.

    ``pruner``: ``none``, ``sha`` or ``hyperband`` (:mod:`.pruning`), for a fitness with ``staged``.

    Everything the user gives is validated before the storage is touched, so bad input stores
    nothing. ``prepared``: what :func:`prepare_search` made of these same settings (a stage that
    checked them before its supernet loaded passes it: nothing is checked or built twice).
    """
    # ---- validate (nothing stored yet) ----
    backbone = (study_attrs or {}).get("backbone")
    if prepared is None:
        prepared = prepare_search(space, dims, budget, n_trials=n_trials, objectives=objectives, sampler=sampler,
                                  seed=seed, seed_subnets=seed_subnets, backbone=backbone,
                                  backbone_params=backbone_params, storage=storage, sampler_options=sampler_options)
    else:  # checked quietly before the supernet loaded: its warning (a budget every subnet fits) is given now
        check_budget(prepared.budget, space, dims)
    budget, objectives, seeds = prepared.budget, prepared.objectives, prepared.seeds
    encoding = SubnetEncoding(space, dims.depth, dims)  # these dims: a prepared search's may be shapes-only
    options = dict(sampler_options or {})
    attrs = _study_attrs(encoding, budget, objectives, {**dict(study_attrs or {}),
                                                        "seed": seed if seed is not None else draw_seed()})
    url = resolve_storage(storage).url if not isinstance(storage, BaseStorage) else type(storage).__name__

    # ---- open / join the study (under the file lock: workers starting together on a new
    # SQLite file would otherwise race to create its tables) ----
    with storage_lock(storage), _quiet_optuna(), warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        backend = open_storage(
            storage,
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            distributions=encoding.distributions,
        )
        try:
            study = optuna.create_study(
                storage=backend,
                study_name=study_name,
                directions=[DIRECTIONS[o] for o in objectives],
                load_if_exists=True,
            )
            _check_or_record_attrs(study, attrs, url)
            check_stored_format(study, url)
            set_metric_names(study, objectives)  # 'val_accuracy' in the dashboard, not 'Objective 0'
        except UniTuneError:
            close_storage(backend)  # refused: leave the storage files as they were
            raise
        n_existing = len(study.get_trials(deepcopy=False))
        for params in seeds:
            study.enqueue_trial(params, user_attrs={"source": "seed"}, skip_if_exists=True)
        if not n_existing and single_methods:
            for label, params in single_method_subnets(encoding, budget)[: max(0, n_trials - len(seeds))]:
                study.enqueue_trial(params, user_attrs={"source": SINGLE_SOURCE, "single_method": label},
                                    skip_if_exists=True)
        base_seed = seed if seed is not None else int(study.user_attrs["seed"])
        index, own_seed = _register_worker(study, base_seed)
    study.sampler = make_sampler(sampler, encoding, budget, seed=own_seed, n_objectives=len(objectives), **options)
    # ``evaluate.n_stages``: how many fidelities a staged fitness reports (see .pruning).
    study.pruner = make_pruner(pruner, getattr(evaluate, "n_stages", 1))

    objective = SubnetObjective(evaluate, encoding, budget, objectives, n_trials, seed=own_seed, worker_index=index)

    def recover() -> None:
        with storage_lock(storage), warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            # Heartbeat storages: Optuna fails stale trials before each trial it runs, but a
            # worker that finds the cap reached runs none, so do it here too (no-op otherwise).
            optuna.storages.fail_stale_trials(study)
            # Called between trials only: this worker runs none, so an orphan cannot be its own.
            recover_dead_trials(study, encoding.distributions, stale_after=stale_after, max_retries=max_retries,
                                idle_token=worker_token())

    def cap_reached() -> bool:
        complete, running = count_states(study)
        return complete + running >= n_trials

    bar = _Progress(n_trials, progress)

    def after_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        reason = trial.user_attrs.get("fail_reason")
        if trial.state == TrialState.FAIL and reason and not str(reason).startswith(("surplus", DUPLICATE)):
            _logger.warning("trial %d failed: %s", trial.number, reason)
        recover()
        bar.update(study)
        if cap_reached():
            study.stop()

    try:
        recover()
        bar.update(study)
        if not cap_reached():
            with _quiet_optuna(), warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                study.optimize(objective, timeout=timeout, callbacks=[after_trial])
    except KeyboardInterrupt:
        # Optuna failed the interrupted trial; hand its parameters back so a rerun evaluates them.
        _requeue_interrupted(study, objective, encoding)
        raise
    finally:
        bar.close()

    best = best_trial(study, required=False)
    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    return SearchResult(
        study=study,
        storage=url,
        n_complete=complete,
        best_trial=best,
        best_subnet=encoding.decode_trial(best) if best is not None else None,
    )


def _requeue_interrupted(study: optuna.Study, objective: SubnetObjective, encoding: SubnetEncoding) -> None:
    if objective.current is None:
        return
    trial = stored_trial(study, objective.current)
    if trial.state == TrialState.FAIL and "val_accuracy" not in trial.user_attrs:
        requeue_trial(study, trial, encoding.distributions)


def open_existing_study(storage: str | os.PathLike | BaseStorage, study_name: str | None = None) -> optuna.Study:
    """Load a unitune study for export/plots; without a name, the storage's only study."""
    backend = open_storage(storage, create=False)
    url = resolve_storage(storage).url if not isinstance(storage, BaseStorage) else type(storage).__name__
    names = [s.study_name for s in optuna.get_all_study_summaries(backend, include_best_trial=False)]
    if study_name is None and len(names) == 1:
        study_name = names[0]
    if study_name is None or study_name not in names:
        if backend is not storage:
            close_storage(backend)
        if study_name is None:
            raise UniTuneError(f"storage {url}: holds {len(names)} studies {names}; name one with --study")
        raise UniTuneError(f"storage {url}: no study named {study_name!r} (studies: {names})")
    return optuna.load_study(study_name=study_name, storage=backend)


def default_storage(out_dir: str | os.PathLike) -> Path:
    """The default storage of a run folder: ``DIR/study.db``."""
    return RunLayout(out_dir).study_db
