"""Tune what decides a PEFT model's accuracy besides its structure: the learning rate, the weight
decay and one learning-rate multiplier per method family (:attr:`Method.family`), for one or more
candidate subnets, with Optuna (TPE) and median pruning over epochs.

Why a stage of its own: the supernet cannot judge a learning rate (every subnet in it trained at
one), and the literature's tuned rates beat a fixed default by 3-5 val points per method, with
families wanting different rates (DESIGN, "What decides PEFT accuracy"). Each trial trains its
subnet alone from the pretrained backbone on the **train** split and is judged on **val** after
each epoch (:func:`.rerank.standalone_epochs`, the re-rank's code): the epochs are the fidelities
Optuna's pruner stops weak trials at. The test split is never built.

The pick is made by a noise-aware rule (:class:`Selection`): the study's few best trials are
trained again on repeated random train/val splits of train+val (or its k folds) and the best mean wins, since with
200 val images the single best trial is a maximum over noise. It is written as a subnet file
whose ``meta.recipe`` holds the chosen values, which ``unitune retrain`` applies over
the config's retrain section (:func:`unitune.engine.config.apply_recipe`). Every trial records
its structure and recipe as user attributes and in its note, where optuna-dashboard shows them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from typing import Any, Sequence

import numpy as np
import optuna

from unitune.engine.context import RunContext
from unitune.errors import DivergedError, UniTuneError
from unitune.io import write_json_atomic
from unitune.supernet import Subnet
from unitune.supernet.methods import METHODS
from unitune.supernet.methods.base import BACKBONE_FAMILY, HEAD_FAMILY

from .notes import save_tune_study_note, save_tune_trial_note
from .selection import Selection, pick, ranked_complete, select, selection_key
from .storage import FAIL_REASON_ATTR, IMPORTED_ATTR
from .study import _quiet_optuna
from .trial import short_recipe, trial_epochs

TUNE_DIR = "tune"
TUNED_SUBNET = "tuned_subnet.yaml"
STRUCTURE_PARAM = "structure"
FULL = "full"  # the candidate label of full fine-tuning (every backbone weight trains)
# :func:`tune_pruner`'s rule, in the study name and compare's fingerprint: a study or comparison
# pruned by another rule is not resumed (a new name when the rule or COMPLETE_FIRST changes)
PRUNER = "median"
# Trials that always complete before the pruner stops any: Selection's default finalists. A
# constant, not the selection's own count: the trials do not depend on the rule that reads them.
COMPLETE_FIRST = 3
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)  # what ``trials`` counts


@dataclasses.dataclass(frozen=True)
class TuneRanges:
    """The search space of the recipe: log-uniform ranges (low, high), low > 0."""

    lr: tuple[float, float] = (1e-4, 1e-1)
    weight_decay: tuple[float, float] = (1e-6, 1e-1)
    lr_mult: tuple[float, float] = (0.1, 10.0)
    # Full fine-tuning moves every pretrained weight: its rates sit ~100x below PEFT's (VTAB-1k
    # recipes use 1e-5..1e-4 for the backbone), and the new head wants far more than the backbone.
    full_lr: tuple[float, float] = (1e-6, 1e-3)
    full_head_mult: tuple[float, float] = (1.0, 1000.0)

    def check(self, where: str = "tune") -> "TuneRanges":
        for name in ("lr", "weight_decay", "lr_mult", "full_lr", "full_head_mult"):
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
    rate. Full fine-tuning: the backbone at ``lr`` (from ``ranges.full_lr``, a parameter of its
    own name so that a study mixing both keeps two distributions), the new head at a multiplier."""
    full = subnet is None
    recipe: dict[str, Any] = {
        "lr": trial.suggest_float("full_lr" if full else "lr", *(ranges.full_lr if full else ranges.lr), log=True),
        "weight_decay": trial.suggest_float("weight_decay", *ranges.weight_decay, log=True),
    }
    families = families_of(subnet)
    if len(families) > 1:
        span = ranges.full_head_mult if full else ranges.lr_mult
        recipe["lr_mult"] = {f: trial.suggest_float(f"lr_mult.{f}", *span, log=True) for f in families[1:]}
    return recipe


def study_name(ctx: RunContext, candidates: Sequence[tuple[str, Subnet | None]], epochs: int,
               ranges: TuneRanges, prior: Sequence["Prior"] = ()) -> str:
    """One study per question: the candidates (labels and contents), the epochs, the ranges and
    everything a stand-alone score depends on (:func:`.rerank.score_key`: the recipe, data, model,
    space and backbone bytes). A rewritten subnet file or a changed config starts a new study
    instead of mixing in trials that answered another one. The selection rule is not in it: it
    reads the trials, never changes them, so another rule re-uses the study (its scores are kept
    per rule: :func:`selection_key`). The prior studies (:func:`import_trials`) are, where given."""
    from .rerank import score_key

    # a name without them is kept; "own": where this study's own trials go (:func:`tune`)
    asked = ({"prior": [[p.label, p.study] for p in prior], "own": "uncovered in turn, first at the prior picks"}
             if prior else {})
    what = json.dumps({**asked, "subnets": [[label, FULL if s is None else s.to_dict()["subnet"]] for label, s in candidates],
                       "pruner": PRUNER, "epochs": epochs, "ranges": dataclasses.asdict(ranges),
                       "run": score_key(ctx, ctx.out, epochs)},
                      sort_keys=True, default=str)
    return "tune-" + hashlib.sha256(what.encode()).hexdigest()[:12]


def check_settings(trials: int, epochs: int, ranges: TuneRanges, selection: Selection | None = None) -> None:
    for name, value in (("trials", trials), ("epochs", epochs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UniTuneError(f"tune: {name}: expected an integer >= 1, got {value!r}")
    ranges.check()
    if selection is not None:
        selection.check()


def tune_pruner(short) -> optuna.pruners.BasePruner:
    """Median pruning (Optuna's ``MedianPruner``): a trial stops at an epoch where its best val
    accuracy so far is below the median of the complete trials' at that epoch; never during the
    warm-up (an epoch of warm-up says little about the rate after it), and not before
    :data:`COMPLETE_FIRST` trials have completed, so that the pick has finalists to choose among
    and the soup members. ``short`` is the trials' recipe (:func:`short_recipe`).

    Why not successive halving: at reduction 3 a trial goes on only while it is among the best
    third at its rung, at least the best so far. On the DINOv2 suite (first rung at epoch 2 of 3)
    three of seven rows completed one trial in eight, running 17 of their 24 trial-epochs: the
    selection and the soup had nothing to choose from. Median pruning saves at most 5 of those 24
    (the 5 trials after the first 3, stopped at epoch 2), and the selection it lets run costs
    finalists x splits x epochs (27) more."""
    first = min(short.warmup_epochs + 1, short.epochs)  # the first epoch a trial can stop at
    return optuna.pruners.MedianPruner(n_startup_trials=COMPLETE_FIRST, n_warmup_steps=first)


@dataclasses.dataclass(frozen=True)
class Prior:
    """A finished study of one of this tune's candidates (the same question, asked of that
    structure alone: the same run, epochs, ranges and seed), whose trials start this study."""

    label: str  # the candidate of this tune whose structure the study tuned
    storage: str | os.PathLike  # its study.db
    study: str  # its name


STARTED_ATTR = "started_from"  # a trial at :func:`started_recipe`'s params: the imported picks it took them from


def import_trials(study: optuna.Study, prior: Sequence[Prior], labels: Sequence[str], key: str) -> None:
    """Add every finished trial of the ``prior`` studies to ``study`` as it stands (its params,
    the structure among them, its value, its epochs' val accuracies and user attributes, its
    CPU-s too: what it cost is counted where it is used), and their stored selection scores under
    ``key``. Why: a study whose structure is a parameter spreads its trials over every candidate,
    and tunes each less than a study of that candidate alone; started from those studies, its
    sampler and pruner know what they found, and its pick chooses among them and its own trials.
    Idempotent: a resumed study imports only what it lacks."""
    def numbers() -> dict[str, int]:  # origin -> this study's trial number, of every imported trial
        return {t.user_attrs[IMPORTED_ATTR]: t.number for t in study.get_trials(deepcopy=False)
                if IMPORTED_ATTR in t.user_attrs}

    have = numbers()
    structure = {STRUCTURE_PARAM: optuna.distributions.CategoricalDistribution(list(labels))} if len(labels) > 1 else {}
    sources = []
    for p in prior:
        with _quiet_optuna():
            sources.append((p, source := optuna.load_study(study_name=p.study, storage=f"sqlite:///{p.storage}")))
        for t in source.get_trials(deepcopy=False, states=FINISHED):
            if (origin := f"{p.study}#{t.number}") not in have:
                study.add_trial(optuna.trial.create_trial(
                    state=t.state, value=t.value, params={**t.params, **({STRUCTURE_PARAM: p.label} if structure else {})},
                    distributions={**t.distributions, **structure}, intermediate_values=t.intermediate_values,
                    user_attrs={**t.user_attrs, "structure": p.label, IMPORTED_ATTR: origin}))
    have = numbers()  # the numbers the storage gave the added trials, read once
    scores = dict(study.user_attrs.get(key) or {})
    for p, source in sources:
        for number, record in (source.user_attrs.get(key) or {}).items():
            if (origin := f"{p.study}#{number}") in have and str(have[origin]) not in scores:
                scores[str(have[origin])] = {**record, "trial": have[origin], "structure": p.label}
    if scores:
        study.set_user_attr(key, scores)


def prior_picks(study: optuna.Study, prior: Sequence[Prior], by_label, selection: "Selection",
                seed: int) -> dict[str, optuna.trial.FrozenTrial]:
    """``{family: trial}``: the pick of each prior study of a single-family structure, among its
    trials imported into ``study``, by the rule its own :func:`tune` applied (:func:`select`'s
    finalists, their imported scores, :func:`pick`; a score stored for a trial outside them, by
    an earlier rule with more finalists, is not read). Two priors of one family: the first."""
    stored = study.user_attrs.get(selection_key(selection, seed)) or {}
    imported = [t for t in ranked_complete(study) if IMPORTED_ATTR in t.user_attrs]
    picks: dict[str, optuna.trial.FrozenTrial] = {}
    for p in prior:
        families = families_of(by_label[p.label])  # full fine-tuning's are two
        if len(families) != 1 or families[0] in picks:
            continue
        ranked = [t for t in imported if t.user_attrs.get("structure") == p.label]
        if ranked:
            finalists = ranked[:selection.finalists] if selection.active else []
            scores = {str(t.number): stored[str(t.number)] for t in finalists if str(t.number) in stored}
            picks[families[0]] = pick(ranked, scores if len(finalists) > 1 else None)
    return picks


def started_recipe(subnet: Subnet | None, picks: dict[str, optuna.trial.FrozenTrial],
                   ranges: TuneRanges) -> dict[str, float]:
    """The params (:func:`suggest_recipe`'s names) of the first own trial on a structure no prior
    study tuned: its first family's pick's learning rate as ``lr``, every other family with a pick
    at the multiplier that gives it its pick's rate (clipped to ``ranges.lr_mult``), the weight
    decay the geometric mean of their picks'. A family without a pick gets its multiplier from the
    sampler; without a pick of the first family (whose rate ``lr`` is) nothing is set. Why: a mix
    has one more free rate per family than a single method, and a study of 8 trials over several
    mixes tries each at ~3 recipes; TPE drawing those from a density fitted mostly to single
    methods' trials starts them anywhere in a 100x range of multipliers, while the single rows have
    already found each family's rate."""
    families = families_of(subnet)
    if not families or families[0] not in picks:  # (a structure with no method on has no family)
        return {}
    recipes = {f: picks[f].user_attrs["recipe"] for f in families if f in picks}
    base = recipes[families[0]]["lr"]
    params = {"lr": float(np.clip(base, *ranges.lr)),
              "weight_decay": float(np.clip(math.exp(np.mean([math.log(r["weight_decay"]) for r in recipes.values()])),
                                            *ranges.weight_decay))}
    for f in families[1:]:
        if f in recipes:
            params[f"lr_mult.{f}"] = float(np.clip(recipes[f]["lr"] / base, *ranges.lr_mult))
    return params


def tune(run, candidates: Sequence[tuple[str, Subnet | None]], out: str | os.PathLike, trials: int = 12,
         epochs: int = 3, ranges: TuneRanges = TuneRanges(), seed: int = 0,
         progress: bool = False, selection: Selection = Selection(), prior: Sequence[Prior] = ()) -> dict[str, Any]:
    """Tune the recipe of ``candidates`` (``[(label, subnet), ...]``; with several, the structure
    is a parameter too; ``(FULL, None)`` is full fine-tuning) in ``trials`` complete or pruned
    trials of up to ``epochs`` epochs each, then pick among the finalists by ``selection``; write
    ``out/tune/tune_result.json`` and, for a subnet pick, ``out/tune/tuned_subnet.yaml`` (its
    recipe in ``meta.recipe``; a stale one of an earlier pick is removed). Full fine-tuning has no
    subnet file: its recipe goes to the config (``retrain.lr=... retrain.lr_mult=...``) and the
    result prints it. ``prior``: finished studies of single candidates whose trials start this
    one (:func:`import_trials`); ``trials`` counts this study's own. Returns the result."""
    ctx = RunContext.of(run, out)
    check_settings(trials, epochs, ranges, selection)
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
    selection.check_data(ctx)

    folder = ctx.out / TUNE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for p in prior:
        if p.label not in by_label:
            raise ValueError(f"tune: prior study {p.study!r} is of {p.label!r}, not a candidate: {labels}")
    name = study_name(ctx, candidates, epochs, ranges, prior)
    short = short_recipe(ctx.run.retrain, epochs)
    with _quiet_optuna():
        study = optuna.create_study(
            storage=f"sqlite:///{folder / 'study.db'}", study_name=name, load_if_exists=True, direction="maximize",
            pruner=tune_pruner(short),
        )
    # TPE's default 10 random start-up trials would leave a short study all random. The seed is
    # offset by the trials already stored: a resumed study seeded afresh drew its first points
    # again (an interrupted DINOv2 study repeated two of them).
    study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials),
                                               n_startup_trials=max(1, min(10, trials // 2)))
    import_trials(study, prior, labels, selection_key(selection, seed))
    study.set_user_attr("candidates", labels)
    study.set_user_attr("epochs", epochs)

    def objective(trial: optuna.Trial) -> float:
        label = trial.suggest_categorical(STRUCTURE_PARAM, labels) if len(labels) > 1 else labels[0]
        subnet = by_label[label]
        recipe = suggest_recipe(trial, subnet, ranges)
        trial.set_user_attr("structure", label)
        trial.set_user_attr("recipe", recipe)
        save_tune_trial_note(trial, label, _sizes(subnet), recipe)  # optuna-dashboard shows it on the trial
        cost: dict = {}
        accuracy = float("nan")
        cpu = time.process_time()
        try:
            for step, accuracy in trial_epochs(ctx, subnet, recipe, epochs, source=label, cost=cost, progress=progress):
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
            trial.set_user_attr("cpu_seconds", round(time.process_time() - cpu, 2))  # kept: a rerun sums them
        trial.set_user_attr("val_accuracy", accuracy)
        return accuracy

    def own(states) -> list[optuna.trial.FrozenTrial]:
        return [t for t in study.get_trials(deepcopy=False, states=states) if IMPORTED_ATTR not in t.user_attrs]

    failed = 0
    # ``trials`` finished (complete or pruned) trials of its own; a diverged one does not count, but
    # as many failures as trials end the stage (the ranges are wrong, not unlucky).
    # Started from single candidates' studies, this study's own trials go to the candidates none of
    # them tuned (the searched structures), in turn, at recipes the sampler draws from every trial
    # it holds: left to TPE, a structure with no trials among 32 imported ones is almost never drawn.
    # The first own trial on each of them starts from the prior studies' picks (:func:`started_recipe`).
    covered = {p.label for p in prior}
    uncovered = [label for label in labels if label not in covered] if prior else []
    picks = prior_picks(study, prior, by_label, selection, seed) if uncovered else {}
    starts = {label: started_recipe(by_label[label], picks, ranges) for label in uncovered}
    origins = {label: [t.user_attrs[IMPORTED_ATTR] for f, t in picks.items() if f in families_of(by_label[label])]
               for label in uncovered}  # the picks each start took its rates from
    while (remaining := trials - len(own(FINISHED))) > 0 and failed < trials:
        if uncovered:  # the turn goes on from every own trial so far (queued by an interrupted run too)
            mine = own(None)
            waiting = optuna.trial.TrialState.WAITING
            queued = sum(t.state == waiting for t in mine)
            # a structure's start is given once: queued, finished, or failed by diverging; one an
            # interrupted run lost (left RUNNING, or failed by the interrupt) is queued again
            given = {t.user_attrs["structure"] for t in mine if STARTED_ATTR in t.user_attrs and (
                t.state in (*FINISHED, waiting) or FAIL_REASON_ATTR in t.user_attrs)}
            for k in range(len(mine), len(mine) + remaining - queued):
                label = uncovered[k % len(uncovered)]
                start = starts[label] if label not in given else {}
                given.add(label)
                study.enqueue_trial({STRUCTURE_PARAM: label, **start},
                                    user_attrs={STARTED_ATTR: origins[label], "structure": label} if start else None)
        with _quiet_optuna():  # one line per trial of our own instead of Optuna's (every parameter)
            study.optimize(objective, n_trials=remaining, catch=(), callbacks=[_say_trial] if progress else [])
        failed = len(own((optuna.trial.TrialState.FAIL,)))
    ranked = ranked_complete(study)
    if not ranked:
        raise UniTuneError(f"tune: no trial completed ({failed} diverged: lower --lr's range; the rest pruned)")

    scores, select_images = select(ctx, study, ranked, by_label, selection, epochs, seed, progress)
    best = pick(ranked, scores)
    selected = scores[str(best.number)] if scores else None
    label, recipe = best.user_attrs["structure"], best.user_attrs["recipe"]
    meta = {"recipe": recipe, "tune": {"trial": best.number, "val_accuracy": best.value, "structure": label,
                                       "trials": len(study.trials), "epochs": epochs, "study": name}}
    if selected:
        meta["tune"]["selection"] = {k: selected[k] for k in ("mean", "se", "scores")}
    rule = (f"the best mean val accuracy of the {len(scores)} finalists over {selection.describe()} (the study's "
            f"own split left out: its scores carry the winner's curse)" if selected
            else "the best val accuracy of the study (ties: the earlier trial)")
    save_tune_study_note(study, best, _sizes(by_label[label]), scores, rule)
    imported = [t for t in study.get_trials(deepcopy=False) if IMPORTED_ATTR in t.user_attrs]
    stale = folder / TUNED_SUBNET
    if label == FULL and stale.is_file():  # an earlier pick's file must not pass for this one's
        stale.unlink()
    path = None if label == FULL else by_label[label].save(folder / TUNED_SUBNET, meta)
    result = {
        "subnet_file": None if path is None else str(path), "structure": label, "recipe": recipe, "val_accuracy": best.value,
        "trial": best.number, "study": name, "storage": str(folder / "study.db"),
        "selection": scores,
        "selection_rule": selection.describe() if scores else None,
        "trials": [{"number": t.number, "state": t.state.name, "value": t.value, **t.user_attrs}
                   for t in study.get_trials(deepcopy=False)],
        "imported": {"trials": len(imported), "cpu_seconds": round(sum(t.user_attrs.get("cpu_seconds", 0.0)
                                                                      for t in imported), 2)},
        "train_images": sum(t.user_attrs.get("train_images", 0) for t in study.trials) + select_images,
        # what the study cost in all (every trial and selection score, an earlier interrupted run's too)
        "cpu_seconds": sum(t.user_attrs.get("cpu_seconds", 0.0) for t in study.trials)
        + sum(r.get("cpu_seconds", 0.0) for r in (scores or {}).values()),
    }
    write_json_atomic(folder / "tune_result.json", result)
    return result


def _sizes(subnet: Subnet | None) -> str:
    return "every weight (full fine-tuning)" if subnet is None else subnet.describe()


def _say_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    attrs = trial.user_attrs
    how = (f"failed: {attrs[FAIL_REASON_ATTR]}" if FAIL_REASON_ATTR in attrs else
           f"pruned after epoch {attrs['pruned_at']}" if "pruned_at" in attrs else
           f"val accuracy {trial.value:.4f}" if trial.value is not None else trial.state.name.lower())
    print(f"tune: trial {trial.number} ({attrs.get('structure')}): {how}; recipe {attrs.get('recipe')}")


def picked_scores(result: dict[str, Any]) -> dict[str, Any] | None:
    """The pick's selection scores in a :func:`tune` result ({mean, se, scores, ...}), or None
    when the selection did not run."""
    return (result.get("selection") or {}).get(str(result["trial"]))


def tune_line(result: dict[str, Any]) -> str:
    recipe = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else
                       f"{k} {{{', '.join(f'{f}: {m:.3g}' for f, m in v.items())}}}" for k, v in result["recipe"].items())
    if result["subnet_file"] is None:  # full fine-tuning: the config carries the recipe
        overrides = " ".join(f"retrain.{k}={json.dumps(v).replace(' ', '')}" for k, v in result["recipe"].items())
        where = f"as config overrides: {overrides}"
    else:
        where = f"-> {result['subnet_file']}"
    chosen = picked_scores(result)
    over = result.get("selection_rule") or f"{len(chosen['scores']) if chosen else 0} splits of train+val"
    how = (f"mean val accuracy {chosen['mean']:.4f} +- {chosen['se']:.4f} over {over} "
           f"(its study val {result['val_accuracy']:.4f})" if chosen else
           f"best val accuracy {result['val_accuracy']:.4f}")
    return f"tune: {how} (trial {result['trial']}, {result['structure']}): {recipe} {where}"


def load_candidates(paths: Sequence[str], ctx: RunContext) -> list[tuple[str, Subnet]]:
    """The subnets of ``--subnet`` arguments (files, or ``FILE#N`` entries of a list)."""
    from .export import select_subnet

    out = []
    for spec in paths:
        subnet, _, label = select_subnet(spec, None, depth=lambda _: ctx.depth)
        if subnet.backbone and subnet.backbone != ctx.run.model.backbone:
            raise UniTuneError(f"{label}: a subnet for backbone {subnet.backbone!r}, but the config uses "
                               f"{ctx.run.model.backbone!r}")
        out.append((label, subnet))
    return out


__all__ = ["FULL", "Selection", "TuneRanges", "check_settings", "tune", "tune_line", "load_candidates", "parse_range", "TUNED_SUBNET", "TUNE_DIR"]
