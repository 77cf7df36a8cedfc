"""One stand-alone training of a tune candidate at a recipe, for a few epochs.

A tune trial (:func:`.tune.tune`) and each of the selection's splits (:func:`.selection.select`)
train a candidate the same way, from the pretrained backbone at the trial's recipe over the
retrain recipe cut to the study's epochs; both (and the benchmarks that re-score a pick) go
through :func:`trial_epochs`, so that a score on a split is a trial's score on another split.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

from unitune.engine.config import apply_recipe
from unitune.engine.context import RunContext
from unitune.supernet import Subnet

from . import rerank


def short_recipe(cfg, epochs: int):
    """The retrain recipe cut to ``epochs`` with its warm-up cut in proportion (a 1-epoch warm-up
    of a 4-epoch retrain is no warm-up of a 1-epoch trial, and would be all of it)."""
    warmup = min(round(cfg.warmup_epochs * epochs / max(cfg.epochs, 1)), epochs - 1)
    return dataclasses.replace(cfg, epochs=epochs, warmup_epochs=max(warmup, 0))


def trial_epochs(ctx: RunContext, subnet: Subnet | None, recipe: dict[str, Any], epochs: int, *, source: str,
                 split: Any = None, cost: dict | None = None, progress: bool = False) -> Iterator[tuple[int, float]]:
    """Train ``subnet`` (None: full fine-tuning, every backbone weight) at ``recipe`` over
    :func:`short_recipe` of the context's retrain for ``epochs``, yielding ``(epoch, val accuracy)``
    (:func:`.rerank.standalone_epochs`, whose ``split`` and ``cost`` these are). ``source`` names
    the candidate in an error of the recipe, which is raised now, before any training."""
    run = dataclasses.replace(ctx.run, retrain=apply_recipe(short_recipe(ctx.run.retrain, epochs), recipe, source))
    # through the module, not a name bound at import: whoever replaces rerank.standalone_epochs (a test's
    # fake) replaces it here too
    return rerank.standalone_epochs(ctx.moved(ctx.out, run), ctx.out, subnet or Subnet.uniform(ctx.depth), epochs,
                                    progress, cost=cost, full=subnet is None, split=split)


__all__ = ["short_recipe", "trial_epochs"]
