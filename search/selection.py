"""The noise-aware final pick of a tune study (:class:`Selection`).

With 200 val images one accuracy has a standard error of ~3 points, so a study's best trial is a
maximum over noise (DESIGN, "What decides PEFT accuracy"): its finalists are trained again on
repeated random train/val splits of train+val (or its k folds) and the best mean wins. The scores are stored on the
study, per rule (:func:`selection_key`), where optuna-dashboard shows them and a rerun re-uses
them. The test split is never built.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Sequence

import numpy as np
import optuna

from unitune.engine.context import RunContext
from unitune.errors import DivergedError, UniTuneError

from .storage import IMPORTED_ATTR
from .trial import trial_epochs


@dataclasses.dataclass(frozen=True)
class Selection:
    """The noise-aware final pick's rule (why: the module docstring).

    The ``finalists`` best trials of the study are each trained again on ``splits`` random
    train/val partitions of train+val pooled (val of the data's val size, stratified, drawn from
    the tune seed; :func:`unitune.data.repeated_splits`), for the tune's epochs, and the pick is
    the finalist with the highest **mean** val accuracy over them (ties: the study's order), with
    its standard error recorded. ``kfold``: the partitions are instead ``splits`` folds of
    train+val (:func:`unitune.data.fold_splits`): every image is judged once, so the mean reads
    all of train+val (5 folds of 1,000 images: 1,000 judgements against 3 x 200), at a val of
    1/``splits`` of it. The data's own split, on which the finalists were chosen, is not among
    them: its scores carry the winner's curse. ``splits: 0`` (or one finalist) takes the study's
    best trial as it stands. The test split is never built."""

    finalists: int = 3
    splits: int = 3
    kfold: bool = False

    def check(self, where: str = "tune") -> "Selection":
        for name in ("finalists", "splits"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "finalists" else 0):
                raise UniTuneError(f"{where}: {name}: expected an integer >= {1 if name == 'finalists' else 0}, "
                                   f"got {value!r}")
        if self.splits == 1:
            raise UniTuneError(f"{where}: splits: 1 split has no spread; expected 0 (off) or >= 2")
        if not isinstance(self.kfold, bool):
            raise UniTuneError(f"{where}: kfold: expected true or false, got {self.kfold!r}")
        if self.kfold and self.splits == 0:
            raise UniTuneError(f"{where}: kfold with splits 0 (the selection off): expected splits >= 2, the folds")
        return self

    @property
    def active(self) -> bool:
        return self.finalists > 1 and self.splits >= 2

    def check_data(self, ctx: RunContext) -> None:
        """k folds need as many train+val images; checked before a study starts (its datasets are
        indexed, not read)."""
        if self.active and self.kfold:
            from unitune.data import build_dataset

            n = sum(len(build_dataset(ctx.run.data, split, None)) for split in ("train", "val"))
            if self.splits > n:
                raise UniTuneError(f"tune: splits: {self.splits} folds (kfold) of {n} train+val images; expected at "
                                   f"most one fold per image")

    def describe(self) -> str:
        """The partitions in words, for notes and tables."""
        if self.kfold:
            return f"{self.splits} folds of train+val, each image in val once"
        return f"{self.splits} random train/val splits of train+val"


SELECTION_ATTR = "selection_scores"


def selection_key(selection: "Selection", seed: int) -> str:
    """The study user attribute that holds one selection rule's scores (``selection_scores`` for
    3 random splits from seed 0, the default; ``selection_scores:5-splits:seed1`` or
    ``selection_scores:5-folds:seed0`` for another rule)."""
    if (selection.splits, selection.kfold, seed) == (Selection.splits, False, 0):
        return SELECTION_ATTR
    return f"{SELECTION_ATTR}:{selection.splits}-{'folds' if selection.kfold else 'splits'}:seed{seed}"


def ranked_complete(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The complete trials with a finite value, best first (ties: the earlier trial)."""
    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if t.value is not None and math.isfinite(t.value)]
    return sorted(done, key=lambda t: (-t.value, t.number))


def pick(ranked: Sequence[optuna.trial.FrozenTrial], scores: dict[str, dict[str, Any]] | None) -> optuna.trial.FrozenTrial:
    """The rule's pick among ``ranked`` (:func:`ranked_complete`): the scored finalist with the
    best mean over the splits (ties: the study's order), or, with no scores, the study's best."""
    if not scores:
        return ranked[0]
    order = {t.number: i for i, t in enumerate(ranked)}
    chosen = max(scores.values(), key=lambda r: (r["mean"], -order[r["trial"]]))
    return next(t for t in ranked if t.number == chosen["trial"])


def select(ctx: RunContext, study: optuna.Study, ranked, by_label, selection: Selection, epochs: int, seed: int,
           progress: bool) -> tuple[dict[str, dict[str, Any]] | None, int]:
    """:class:`Selection`'s scores of the ``ranked`` trials' finalists: ``({trial number (str):
    {trial, structure, study_val_accuracy, scores, mean, se}}, train images)``, or ``(None, 0)``
    when the rule is off. They are stored on the study (user attribute :func:`selection_key`,
    which optuna-dashboard shows) as they come, and a rerun re-uses them."""
    from unitune.data import build_dataset, fold_splits, repeated_splits

    key = selection_key(selection, seed)  # the scores depend on the splits (rule, count, seed), not on the finalists
    stored = {int(k): v for k, v in (study.user_attrs.get(key) or {}).items()}
    # A study started from others' (:func:`.tune.import_trials`) also holds every finalist their
    # selections scored, at no cost: the pick is then the best of each of them (a single row's pick
    # among them) and of this study's own best, never a lower-scored copy of a row's choice.
    finalists = ranked[:selection.finalists]
    finalists += [t for t in ranked[selection.finalists:] if IMPORTED_ATTR in t.user_attrs and t.number in stored]
    if not selection.active or len(finalists) < 2:
        return None, 0
    train = build_dataset(ctx.run.data, "train", None)
    val = build_dataset(ctx.run.data, "val", None)
    targets = [*train.targets, *val.targets]
    splits = (fold_splits(targets, selection.splits, seed) if selection.kfold
              else repeated_splits(targets, len(val), selection.splits, seed))
    images = 0
    for t in finalists:
        scores = stored.get(t.number, {}).get("scores", [])
        label, recipe = t.user_attrs["structure"], t.user_attrs["recipe"]
        spent = stored.get(t.number, {}).get("cpu_seconds", 0.0)
        for k in range(len(scores), len(splits)):
            cost: dict = {}
            accuracy = float("nan")
            cpu = time.process_time()
            try:
                for _, accuracy in trial_epochs(ctx, by_label[label], recipe, epochs, source=label, split=splits[k],
                                                cost=cost):
                    pass
            except DivergedError:  # on another split the rate diverged: that finalist is not to be trusted
                accuracy = 0.0
            images += cost.get("train_images", 0)
            spent += time.process_time() - cpu
            scores.append(accuracy)
            mean = float(np.mean(scores))
            se = float(np.std(scores, ddof=1) / math.sqrt(len(scores))) if len(scores) > 1 else None
            stored[t.number] = {"trial": t.number, "structure": label, "study_val_accuracy": t.value,
                                "scores": scores, "mean": mean, "se": se, "cpu_seconds": round(spent, 2)}
            study.set_user_attr(key, {str(n): v for n, v in stored.items()})
            if progress:
                print(f"tune: selection: trial {t.number} ({label}) {'fold' if selection.kfold else 'split'} "
                      f"{k + 1}/{len(splits)}: val accuracy "
                      f"{accuracy:.4f}")
    return {str(t.number): stored[t.number] for t in finalists}, images


__all__ = ["SELECTION_ATTR", "Selection", "pick", "ranked_complete", "select", "selection_key"]
