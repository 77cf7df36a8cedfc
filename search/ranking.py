"""Which trial of a study is best, and how the others rank after it.

One rule, so that optuna-dashboard, ``best_subnet.yaml``, ``export-subnet`` and the
run summary name the same trial:

- one objective (``acc``): Optuna's own ``study.best_trial``, which is what optuna-dashboard
  marks. Among trials that tie on val accuracy Optuna takes the one its storage returns first
  (in practice the earliest; Optuna documents no tie rule). unitune once preferred the tied
  trial with fewer parameters, and the dashboard then showed another "best" than the file; a
  hidden rule that differs from the one on screen costs more than a few parameters, and a
  search that should trade accuracy for size has ``acc,params`` for that.
  :func:`best_ties` lists the ties, and the run summary says how many there were.
- after ``search.rerank`` (one objective or two): the re-rank's winner, the candidate with the best
  stand-alone val accuracy (stored on the study as the ``rerank`` attribute). The dashboard still
  marks Optuna's best by inherited accuracy; the study's note and its ``best_trial`` attribute
  name the re-ranked one, as ``best_subnet.yaml``, ``export-subnet`` and the summary do.
- two objectives (``acc,params``): Optuna has no single best; the dashboard shows the Pareto
  front. The best is the front's most accurate point, i.e. the highest accuracy, then the fewest
  parameters, then the earliest trial, which is always on the front.

Every trial in the storage is within budget (the sampler repairs before storing), so "best"
needs no feasibility filter beyond the COMPLETE state.

Its own module because the export, the plots, the search loop and the re-rank all rank trials;
while it lived in ``export.py`` those modules imported each other in a circle.
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

from unitune.errors import UniTuneError

RERANK_ATTR = "rerank"  # the study attribute search.rerank writes (its figures and its winner)


def _accuracy(trial: FrozenTrial) -> float:
    return float(trial.values[0])


def _n_params(trial: FrozenTrial) -> int:
    return int(trial.user_attrs.get("n_params", 0))


def _key(t: FrozenTrial) -> tuple:
    return -_accuracy(t), _n_params(t), t.number


def ranked_trials(study: optuna.Study, reranked: bool = True) -> list[FrozenTrial]:
    """COMPLETE trials, best first: :func:`best_trial`, then the others by accuracy down, then
    parameters up, then trial number up. ``reranked=False``: by inherited accuracy alone (what
    the re-rank itself draws its candidates from)."""
    trials = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=_key)
    if trials:
        # with one objective or two: the re-rank's winner is what it wrote to best_subnet.yaml
        best = _reranked_winner(study, trials) if reranked else None
        if best is None and len(study.directions) == 1:
            best = study.best_trial.number  # Optuna's (and the dashboard's) choice leads
        if best is not None:
            trials.sort(key=lambda t: t.number != best)  # stable: the rest keep their order
    return trials


def _reranked_winner(study: optuna.Study, complete: list[FrozenTrial]) -> int | None:
    """The trial ``search.rerank`` picked by stand-alone val accuracy, if it ran (see rerank.py)."""
    winner = (study.user_attrs.get(RERANK_ATTR) or {}).get("winner")
    return winner if any(t.number == winner for t in complete) else None


def best_trial(study: optuna.Study, required: bool = True) -> FrozenTrial | None:
    """The best COMPLETE trial by the module's one rule (the re-rank's winner, else Optuna's
    ``best_trial`` for one objective)."""
    ranked = ranked_trials(study)
    if not ranked:
        if required:
            raise UniTuneError(f"study {study.study_name!r}: has no complete trial yet")
        return None
    return ranked[0]


def best_ties(study: optuna.Study) -> list[FrozenTrial]:
    """The COMPLETE trials with the best trial's val accuracy (itself included), fewest parameters first."""
    best = best_trial(study, required=False)
    if best is None:
        return []
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted((t for t in trials if _accuracy(t) == _accuracy(best)), key=_key)


def pareto_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The accuracy / parameter Pareto front of the COMPLETE trials, fewest parameters first.

    Computed from the ``n_params`` attribute, so it exists for single-objective studies too.
    Of trials with equal (accuracy, parameters) only the earliest is kept.
    """
    front: list[FrozenTrial] = []
    best_acc = float("-inf")
    for t in sorted(ranked_trials(study), key=lambda t: (_n_params(t), -_accuracy(t), t.number)):
        if _accuracy(t) > best_acc:
            front.append(t)
            best_acc = _accuracy(t)
    return front
