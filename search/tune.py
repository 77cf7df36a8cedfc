"""Tune what decides a PEFT model's accuracy besides its structure: the learning rate, the weight
decay and one learning-rate multiplier per method family (:attr:`Method.family`), for one or more
candidate subnets, with Optuna (TPE) and successive halving over epochs.

Why a stage of its own: the supernet cannot judge a learning rate (every subnet in it trained at
one), and the literature's tuned rates beat a fixed default by 3-5 val points per method, with
families wanting different rates (DESIGN, "What decides PEFT accuracy"). Each trial trains its
subnet alone from the pretrained backbone on the **train** split and is judged on **val** after
each epoch (:func:`.rerank.standalone_epochs`, the re-rank's code): the epochs are the fidelities
Optuna's pruner stops weak trials at. The test split is never built.

The pick is the trial with the best final val accuracy (ties: the earlier trial). It is written as
a subnet file whose ``meta.recipe`` holds the chosen values, which ``unitune retrain`` applies over
the config's retrain section (:func:`unitune.engine.config.apply_recipe`). Every trial records
its structure and recipe as user attributes and in its note, where optuna-dashboard shows them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from typing import Any, Sequence

import optuna

from unitune.engine.config import apply_recipe
from unitune.engine.context import RunContext
from unitune.errors import DivergedError, UniTuneError
from unitune.io import write_json_atomic
from unitune.supernet import Subnet
from unitune.supernet.methods import METHODS
from unitune.supernet.methods.base import BACKBONE_FAMILY, HEAD_FAMILY

from .storage import FAIL_REASON_ATTR
from .study import _quiet_optuna

TUNE_DIR = "tune"
TUNED_SUBNET = "tuned_subnet.yaml"
STRUCTURE_PARAM = "structure"
FULL = "full"  # the candidate label of full fine-tuning (every backbone weight trains)


@dataclasses.dataclass(frozen=True)
class TuneRanges:
    """The search space of the recipe: log-uniform ranges (low, high), low > 0."""

    lr: tuple[float, float] = (1e-4, 1e-1)
    weight_decay: tuple[float, float] = (1e-6, 1e-1)
    lr_mult: tuple[float, float] = (0.1, 10.0)

    def check(self, where: str = "tune") -> "TuneRanges":
        for name in ("lr", "weight_decay", "lr_mult"):
            low, high = getattr(self, name)
            if not (math.isfinite(low) and math.isfinite(high) and 0 < low < high):
                raise UniTuneError(f"{where}: {name} range {low}:{high}: expected 0 < low < high, both finite")
        return self


def parse_range(text: str, where: str) -> tuple[float, float]:
    """``"1e-4:1e-1"`` as (1e-4, 0.1)."""
    low, sep, high = str(text).partition(":")
    try:
        if not sep:
            raise ValueError
        return float(low), float(high)
    except ValueError:
        raise UniTuneError(f"{where} {text!r}: expected LOW:HIGH, e.g. 1e-4:1e-1") from None


def families_of(subnet: Subnet | None) -> list[str]:
    """The optimiser families of the methods ``subnet`` switches on, in registry order; for full
    fine-tuning (``None``) the backbone and the head."""
    if subnet is None:
        return [BACKBONE_FAMILY, HEAD_FAMILY]
    return list(dict.fromkeys(METHODS[m].family for m in METHODS if subnet.is_on(m)))


def suggest_recipe(trial: optuna.Trial, subnet: Subnet | None, ranges: TuneRanges) -> dict[str, Any]:
    """The trial's recipe. Where two or more families train, the learning rate is the first
    family's (and the head's) and every other family gets a multiplier relative to it: one free
    rate per family and no more, as a multiplier on every family would only rescale the learning
    rate. Full fine-tuning: the backbone at ``lr``, the new head at a multiplier of it."""
    recipe: dict[str, Any] = {
        "lr": trial.suggest_float("lr", *ranges.lr, log=True),
        "weight_decay": trial.suggest_float("weight_decay", *ranges.weight_decay, log=True),
    }
    families = families_of(subnet)
    if len(families) > 1:
        recipe["lr_mult"] = {f: trial.suggest_float(f"lr_mult.{f}", *ranges.lr_mult, log=True) for f in families[1:]}
    return recipe


def study_name(labels: Sequence[str], epochs: int, ranges: TuneRanges) -> str:
    """One study per candidate set, epoch count and ranges: a changed setting starts a new study
    instead of mixing trials that answered another question."""
    what = json.dumps({"subnets": list(labels), "epochs": epochs, "ranges": dataclasses.asdict(ranges)},
                      sort_keys=True)
    return "tune-" + hashlib.sha256(what.encode()).hexdigest()[:12]


def check_settings(trials: int, epochs: int, ranges: TuneRanges) -> None:
    for name, value in (("trials", trials), ("epochs", epochs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UniTuneError(f"tune: {name}: expected an integer >= 1, got {value!r}")
    ranges.check()


def tune(run, candidates: Sequence[tuple[str, Subnet | None]], out: str | os.PathLike, trials: int = 12,
         epochs: int = 3, ranges: TuneRanges = TuneRanges(), seed: int = 0,
         progress: bool = False) -> dict[str, Any]:
    """Tune the recipe of ``candidates`` (``[(label, subnet), ...]``; with several, the structure
    is a parameter too; ``(FULL, None)`` is full fine-tuning) in ``trials`` complete or pruned
    trials of up to ``epochs`` epochs each; write ``out/tune/tune_result.json`` and, for a subnet
    pick, ``out/tune/tuned_subnet.yaml`` (its recipe in ``meta.recipe``). Full fine-tuning has
    no subnet file: its recipe goes to the config (``retrain.lr=... retrain.lr_mult=...``) and
    the result prints it. Returns the result."""
    from .rerank import standalone_epochs

    ctx = RunContext.of(run, out)
    check_settings(trials, epochs, ranges)
    if not candidates:
        raise UniTuneError("tune: no candidate subnet (give --subnet FILE, once or more)")
    labels = [label for label, _ in candidates]
    if len(set(labels)) != len(labels):
        raise UniTuneError(f"tune: a candidate is given twice: {labels}")
    by_label = dict(candidates)
    for label, subnet in candidates:  # before any training: the structure fits this run
        if (subnet is None) != (label == FULL):
            raise ValueError(f"tune: candidate {label!r}: full fine-tuning is ({FULL!r}, None), a subnet has a label")
        if subnet is not None:
            subnet.check(ctx.depth, ctx.space, source=label)

    folder = ctx.out / TUNE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    # the candidates' contents and the run's recipe, data, model and weights too: a rewritten
    # best_subnet.yaml or a changed config starts a new study instead of reusing old trials
    from .rerank import score_key
    contents = [by_label[label].to_dict()["subnet"] if by_label[label] is not None else FULL for label in labels]
    name = study_name([json.dumps([label, c, score_key(ctx, ctx.out, epochs)], sort_keys=True, default=str)
                       for label, c in zip(labels, contents)], epochs, ranges)
    with _quiet_optuna():
        study = optuna.create_study(
            storage=f"sqlite:///{folder / 'study.db'}", study_name=name, load_if_exists=True, direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=seed),
            pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3),
        )
    study.set_user_attr("candidates", labels)
    study.set_user_attr("epochs", epochs)

    def objective(trial: optuna.Trial) -> float:
        label = trial.suggest_categorical(STRUCTURE_PARAM, labels) if len(labels) > 1 else labels[0]
        subnet = by_label[label]
        recipe = suggest_recipe(trial, subnet, ranges)
        trial.set_user_attr("structure", label)
        trial.set_user_attr("recipe", recipe)
        tuned = dataclasses.replace(ctx.run, retrain=apply_recipe(ctx.run.retrain, recipe, label))
        cost: dict = {}
        accuracy = float("nan")
        try:
            for step, accuracy in standalone_epochs(ctx.moved(ctx.out, tuned), ctx.out,
                                                    subnet or Subnet.uniform(ctx.depth), epochs, progress,
                                                    cost=cost, full=subnet is None):
                trial.report(accuracy, step)
                if step < epochs and trial.should_prune():
                    trial.set_user_attr("pruned_at", step)
                    raise optuna.TrialPruned(f"pruned after epoch {step} (val accuracy {accuracy:.4f})")
        except DivergedError as e:  # a rate too high is an answer about the rate: the trial fails, the study goes on
            trial.set_user_attr(FAIL_REASON_ATTR, str(e)[:500])
            return float("nan")
        finally:
            for key, value in cost.items():
                trial.set_user_attr(key, value)
        trial.set_user_attr("val_accuracy", accuracy)
        return accuracy

    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    failed = 0
    # ``trials`` finished (complete or pruned) trials; a diverged one does not count, but as many
    # failures as trials end the stage (the ranges are wrong, not unlucky).
    while (remaining := trials - len(study.get_trials(deepcopy=False, states=finished))) > 0 and failed < trials:
        with _quiet_optuna():  # one line per trial of our own instead of Optuna's (every parameter)
            study.optimize(objective, n_trials=remaining, catch=(), callbacks=[_say_trial] if progress else [])
        failed = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,)))
    complete = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                if t.value is not None and math.isfinite(t.value)]
    if not complete:
        raise UniTuneError(f"tune: no trial completed ({failed} diverged: lower --lr's range; the rest pruned)")
    best = max(complete, key=lambda t: (t.value, -t.number))  # ties: the earlier trial
    label, recipe = best.user_attrs["structure"], best.user_attrs["recipe"]
    meta = {"recipe": recipe, "tune": {"trial": best.number, "val_accuracy": best.value, "structure": label,
                                       "trials": len(study.trials), "epochs": epochs, "study": name}}
    path = None if label == FULL else by_label[label].save(folder / TUNED_SUBNET, meta)
    result = {
        "subnet_file": None if path is None else str(path), "structure": label, "recipe": recipe, "val_accuracy": best.value,
        "trial": best.number, "study": name, "storage": str(folder / "study.db"),
        "trials": [{"number": t.number, "state": t.state.name, "value": t.value, **t.user_attrs}
                   for t in study.get_trials(deepcopy=False)],
        "train_images": sum(t.user_attrs.get("train_images", 0) for t in study.trials),
    }
    write_json_atomic(folder / "tune_result.json", result)
    return result


def _say_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    attrs = trial.user_attrs
    how = (f"failed: {attrs[FAIL_REASON_ATTR]}" if FAIL_REASON_ATTR in attrs else
           f"pruned after epoch {attrs['pruned_at']}" if "pruned_at" in attrs else
           f"val accuracy {trial.value:.4f}" if trial.value is not None else trial.state.name.lower())
    print(f"tune: trial {trial.number} ({attrs.get('structure')}): {how}; recipe {attrs.get('recipe')}")


def tune_line(result: dict[str, Any]) -> str:
    recipe = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else
                       f"{k} {{{', '.join(f'{f}: {m:.3g}' for f, m in v.items())}}}" for k, v in result["recipe"].items())
    if result["subnet_file"] is None:  # full fine-tuning: the config carries the recipe
        overrides = " ".join(f"retrain.{k}={json.dumps(v).replace(' ', '')}" for k, v in result["recipe"].items())
        where = f"as config overrides: {overrides}"
    else:
        where = f"-> {result['subnet_file']}"
    return (f"tune: best val accuracy {result['val_accuracy']:.4f} (trial {result['trial']}, {result['structure']}): "
            f"{recipe} {where}")


def load_candidates(paths: Sequence[str], ctx: RunContext) -> list[tuple[str, Subnet]]:
    """The subnets of ``--subnet`` arguments (files, or ``FILE#N`` entries of a list)."""
    from .export import select_subnet

    out = []
    for spec in paths:
        subnet, _, label = select_subnet(spec, None, depth=lambda _: ctx.depth)
        out.append((label, subnet))
    return out


__all__ = ["FULL", "TuneRanges", "check_settings", "tune", "tune_line", "load_candidates", "parse_range", "TUNED_SUBNET", "TUNE_DIR"]
