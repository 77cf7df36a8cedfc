"""One Optuna trial: suggest the per-block choices, evaluate that subnet, record what a person reads.

User attributes of every trial (shown by optuna-dashboard):

- ``worker``: ``host:pid:start`` of the process running it (dead-worker recovery uses it);
- ``n_params`` (what the budget constrains, head excluded), ``n_params_with_head``,
  ``params_lora``, ``params_adapter``, ``params_vpt``, ``params_ssf`` (global SSF included);
- ``sizes_lora`` ... ``sizes_ssf`` (per-block sizes, e.g. ``'10 5 0 1'``), ``sizes_ssf_global``;
- ``val_accuracy`` and ``eval_seconds`` once evaluated; ``pruned_at_step`` for a trial Optuna's
  pruner stopped (state PRUNED, see :mod:`.pruning`), and what the evaluation cost
  (``val_images_seen``; ``train_images`` for the standalone fitness);
- ``repair_steps`` (set by the sampler: how many one-index cuts the repair made), ``source``
  (``seed`` for an enqueued seed subnet) and ``retry_of`` for a re-run of a dead worker's trial;
- ``sampler_seed`` and ``worker_index``: the seed of the worker's sampler and repair, and its
  number in the study (:mod:`.seeds`); ``source: single-method`` and ``single_method`` for the
  single-method seeds;
- a markdown note (optuna-dashboard's note API, :mod:`.notes`) with the per-block sizes and
  parameter counts and the per-method totals, once evaluated;
- ``fail_reason`` when the trial failed (a non-finite accuracy, an error, the global trial cap,
  or ``duplicate``: another trial holds the same subnet, so this one was not evaluated, see
  :mod:`.dedup`).

A non-finite fitness fails only that trial (the objective returns NaN, which Optuna records as
FAIL without a traceback) and the study goes on.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import optuna
from optuna.trial import TrialState

from unitune.supernet import Subnet, count_params

from .dedup import DUPLICATE, FINISHED, duplicate_of
from unitune.supernet.encoding import SubnetEncoding, sizes_summary
from .pruning import PRUNED_AT_ATTR
from .seeds import SINGLE_SOURCE
from .notes import save_trial_note
from .storage import FAIL_REASON_ATTR, WORKER_ATTR, requeue_trial, stored_trial, worker_token


class SubnetObjective:
    """The callable given to ``study.optimize``.

    ``n_trials`` is the study-wide cap on finished (COMPLETE or PRUNED) trials: a trial that
    finds the study already holds ``n_trials`` finished trials plus RUNNING ones started before
    it is surplus (another
    worker raced it to the last slot); it fails at once, before sampling anything, hands back
    any enqueued parameters it had popped, and stops this worker.
    """

    def __init__(
        self,
        evaluate: Callable[[Subnet], float],
        encoding: SubnetEncoding,
        budget: int,
        objectives: Sequence[str],
        n_trials: int,
        seed: int | None = None,
        worker_index: int | None = None,
    ):
        assert encoding.dims is not None
        self.seed = seed
        self.worker_index = worker_index
        self.evaluate = evaluate
        self.encoding = encoding
        self.budget = budget
        self.objectives = tuple(objectives)
        self.n_trials = n_trials
        self.current: int | None = None  # number of the trial this worker is running
        self._token: tuple[int, str] | None = None

    def _worker(self) -> str:
        import os

        if self._token is None or self._token[0] != os.getpid():  # recompute after a fork
            self._token = (os.getpid(), worker_token())
        return self._token[1]

    def _fail(self, trial: optuna.Trial, reason: str) -> tuple[float, ...] | float:
        trial.set_user_attr(FAIL_REASON_ATTR, reason)
        nan = float("nan")
        return nan if len(self.objectives) == 1 else (nan,) * len(self.objectives)

    def _is_surplus(self, trial: optuna.Trial) -> bool:
        trials = trial.study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
        complete = sum(t.state in FINISHED for t in trials)
        ahead = sum(t.state == TrialState.RUNNING and t.number < trial.number for t in trials)
        return complete + ahead >= self.n_trials

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        self.current = trial.number
        trial.set_user_attr(WORKER_ATTR, self._worker())
        if self.seed is not None:
            trial.set_user_attr("sampler_seed", self.seed)
        if self.worker_index is not None:
            trial.set_user_attr("worker_index", self.worker_index)
        if self._is_surplus(trial):
            study = trial.study
            frozen = stored_trial(study, trial.number)
            requeue_trial(study, frozen, self.encoding.distributions, count=False)
            study.stop()
            return self._fail(trial, f"surplus: the study already reached n_trials={self.n_trials}")

        # the sizes themselves (the dashboard's plots read them); the sampler proposes indices
        params = {name: trial.suggest_categorical(name, d.choices) for name, d in self.encoding.distributions.items()}
        # Stored first, then checked: see .dedup for why this order never lets two workers
        # evaluate one subnet.
        other = duplicate_of(trial.study, trial.number, self.encoding.names)
        if other is not None:
            return self._fail(trial, f"{DUPLICATE}: trial {other} holds the same subnet; not evaluated")
        subnet = self.encoding.decode(params, source=f"trial {trial.number}")
        count = count_params(subnet, self.encoding.dims, self.encoding.space)
        trial.set_user_attr("n_params", count.total)
        trial.set_user_attr("n_params_with_head", count.with_head)
        for method, n in count.per_method.items():
            trial.set_user_attr(f"params_{method}", n)
        for key, text in sizes_summary(subnet).items():
            trial.set_user_attr(key, text)
        if count.total > self.budget:
            # Only enqueued parameters bypass the repairing sampler; never evaluate over budget.
            return self._fail(trial, f"over budget: {count.total} > {self.budget} parameters (enqueued parameters)")

        start = time.perf_counter()
        try:
            accuracy, pruned_at = self._evaluate(trial, subnet)
        except Exception as e:
            trial.set_user_attr(FAIL_REASON_ATTR, f"{type(e).__name__}: {e}"[:500])
            raise
        finally:
            for key, value in getattr(self.evaluate, "last_cost", {}).items():
                trial.set_user_attr(key, value)
            trial.set_user_attr("eval_seconds", round(time.perf_counter() - start, 4))
        if pruned_at is not None:
            # Outside the try: TrialPruned is an Exception, and a pruned trial is no failure.
            trial.set_user_attr(PRUNED_AT_ATTR, pruned_at)
            raise optuna.TrialPruned(f"pruned at step {pruned_at} (val accuracy {accuracy:.4f})")
        if not math.isfinite(accuracy):
            trial.set_user_attr("val_accuracy", str(accuracy))
            return self._fail(trial, f"non-finite accuracy {accuracy}")
        trial.set_user_attr("val_accuracy", accuracy)
        save_trial_note(trial, subnet, count, self.budget, accuracy)  # sizes, not indices, for the dashboard
        if self.objectives == ("acc",):
            return accuracy
        return accuracy, float(count.total)

    def _evaluate(self, trial: optuna.Trial, subnet: Subnet) -> tuple[float, int | None]:
        """(accuracy, step it was pruned at or None). A fitness with ``staged`` reports each
        fidelity to Optuna's pruner (:mod:`.pruning`); seeds report but are never pruned."""
        staged = getattr(self.evaluate, "staged", None)
        if staged is None:
            return float(self.evaluate(subnet)), None
        report = self.objectives == ("acc",)  # Optuna's trial.report is single-objective only
        prunable = report and trial.user_attrs.get("source") not in ("seed", SINGLE_SOURCE)
        last = getattr(self.evaluate, "n_stages", None) or float("inf")
        accuracy = float("nan")
        for step, value in staged(subnet):
            accuracy = float(value)
            if report and math.isfinite(accuracy):
                trial.report(accuracy, step)
                # Never at the last fidelity: the trial is fully evaluated by then, nothing to save.
                if prunable and step < last and trial.should_prune():
                    return accuracy, step
        return accuracy, None
