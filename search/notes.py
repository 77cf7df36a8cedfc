"""What a person reads in stock optuna-dashboard: markdown notes on trials and on the study.

The trial's parameters are the sizes themselves (``lora.01 = 4`` is rank 4 in block 1,
:mod:`.encoding`). Every evaluated trial also carries a note (optuna-dashboard's note API, shown
on the trial's page) with the per-block sizes and parameter counts and the per-method totals; the
pick (the trial ``best_subnet.yaml`` holds) says so in its note, with the figure that decided it;
the study carries a note with the budget, the objectives, and "best" told one way: the search's
best val accuracy (the dashboard's star), the pick and its deciding value, and why the test
accuracy after ``retrain`` differs from both.
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial

from unitune.supernet import ParamCount, Subnet
from unitune.supernet.methods import METHODS

METRIC_NAMES = {"acc": "val_accuracy", "params": "n_params"}


def _save_note(study_or_trial, body: str) -> None:
    from optuna_dashboard import save_note

    save_note(study_or_trial, body)


def subnet_table(subnet: Subnet, count: ParamCount | None, per_method: dict[str, int] | None = None) -> str:
    """Markdown: one row per block (sizes, then parameters), global SSF, per-method totals.

    Without ``count`` (a study read back without the backbone's shapes) the per-block parameter
    column is left out and the per-method totals come from ``per_method``."""
    depth = subnet.depth
    shown = subnet.shown_methods()
    columns = [m for m in shown if METHODS[m].site == "block"]
    head = "| block | " + " | ".join(columns) + (" | parameters |" if count else " |")
    rows = [head, "|" + "---:|" * (len(columns) + 1 + bool(count))]
    for i in range(depth):
        sizes = " | ".join(str(subnet.sizes(m)[i]) for m in columns)
        rows.append(f"| {i} | {sizes} |" + (f" {sum(count.per_block[i].values()):,} |" if count else ""))
    for g in (m for m in shown if METHODS[m].site == "model" and subnet.is_on(m)):
        # a model-level method's row: its size under the column of the method it reports as
        method = METHODS[g]
        value = "on" if method.on_off else str(subnet.sizes(g))
        cells = [value if c == method.report_key else "" for c in columns]
        if method.report_key not in columns:
            cells[-1] = value
        rows.append(f"| {method.heading} | " + " | ".join(cells) + " |"
                    + (f" {count.per_model.get(g, 0):,} |" if count else ""))
    totals = dict(count.per_method) if count else dict(per_method or {})
    rows += ["", "| method | parameters | blocks used |", "|---|---:|---:|"]
    for m in columns:
        used = sum(1 for s in subnet.sizes(m) if s)
        joined = [g for g in shown if METHODS[g].site == "model" and METHODS[g].report_key == m and subnet.is_on(g)]
        extra = " (+ global)" if joined else ""
        n = totals.get(m)
        rows.append(f"| {m} | {'?' if n is None else f'{n:,}'} | {used}/{depth}{extra} |")
    if totals:
        rows.append(f"| **total** (head excluded) | **{sum(totals.values()):,}** | |")
    if count:
        rows.append(f"| head | {count.head:,} | |")
    return "\n".join(rows)


def trial_note(number: int, subnet: Subnet, count: ParamCount | None, budget: int, accuracy: float | None,
               pick: str = "", per_method: dict[str, int] | None = None, total: int | None = None) -> str:
    """The trial's note; ``pick`` (a sentence) heads it when it is the pick. Without ``count``
    (the note rewritten later, without the backbone's shapes) ``per_method``/``total`` give the counts."""
    acc = f"val accuracy **{accuracy:.4f}**, " if accuracy is not None else ""
    total = count.total if count is not None else int(total or sum((per_method or {}).values()))
    return ((f"{PICK_HEAD}{pick}\n\n" if pick else "")
            + f"### Trial {number}: {acc}{total:,} parameters "
            f"({total / budget:.0%} of the budget of {budget:,})\n\n"
            "Sizes per block (LoRA rank, adapter width, VPT tokens, SSF on/off), as the trial's "
            "parameters hold them.\n\n" + subnet_table(subnet, count, per_method) + "\n")


def save_trial_note(trial: optuna.Trial, subnet: Subnet, count: ParamCount, budget: int, accuracy: float | None) -> None:
    _save_note(trial, trial_note(trial.number, subnet, count, budget, accuracy))


def _finished_trial(study: optuna.Study, number: int):
    """What optuna-dashboard's ``save_note`` / ``get_note`` read of a trial: they take a live
    ``optuna.Trial`` (its storage, its study's id, its trial id); building one for a finished trial
    would run the sampler's ``before_trial`` again, so they get an object with just those three,
    the ids read through :func:`~.storage.trial_storage` (public storage calls)."""
    from types import SimpleNamespace

    from .storage import trial_storage

    storage, trial_id = trial_storage(study, number)
    study_id = storage.get_study_id_from_name(study.study_name)
    return SimpleNamespace(storage=storage, study=SimpleNamespace(_study_id=study_id), _trial_id=trial_id)


PICK_HEAD = "**The pick.** "


def pick_reason(study: optuna.Study, best: FrozenTrial) -> str:
    """One sentence: why ``best`` is the pick and the figure that decided it."""
    record = study.user_attrs.get("rerank") or {}
    if record.get("winner") == best.number:
        rows = record.get("candidates") or []
        row = next((r for r in rows if r["trial"] == best.number), {})
        return (f"`best_subnet.yaml` holds this trial: the re-rank trained {len(rows)} candidates (the top "
                f"{record.get('top_k')} by val accuracy and the single methods) for {record.get('epochs')} epochs "
                f"on the train split, and this one scored the best stand-alone val accuracy, "
                f"**{row.get('standalone_val_accuracy', float('nan')):.4f}** (its inherited val accuracy: "
                f"{float(best.values[0]):.4f}).")
    if len(study.directions) > 1:
        return ("`best_subnet.yaml` holds this trial: the most accurate point of the accuracy/parameters "
                f"Pareto front, val accuracy **{float(best.values[0]):.4f}**.")
    return ("`best_subnet.yaml` holds this trial: the best val accuracy of the search, "
            f"**{float(best.values[0]):.4f}** (Optuna's best_trial, the dashboard's star).")


def _rewrite_trial_note(study: optuna.Study, trial: FrozenTrial, pick: str, count: ParamCount | None = None) -> None:
    """Head the trial's note with ``pick`` (or drop an earlier pick's head when ``pick`` is empty),
    keeping the rest of the note as the objective wrote it."""
    from optuna_dashboard import get_note

    target = _finished_trial(study, trial.number)
    body = get_note(target)
    if body.startswith(PICK_HEAD):
        body = body.split("\n\n", 1)[1] if "\n\n" in body else ""
    if not body:  # no note yet (a trial stored without one): written from its attributes
        from unitune.supernet import SearchSpace

        from unitune.supernet.encoding import SubnetEncoding  # (study.study_encoding's work: study.py imports this module)

        attrs = trial.user_attrs
        per_method = {m: attrs[f"params_{m}"] for m in METHODS if f"params_{m}" in attrs}
        encoding = SubnetEncoding(SearchSpace.from_dict(study.user_attrs["space"]), int(study.user_attrs["depth"]))
        body = trial_note(trial.number, encoding.decode_trial(trial), count,
                          int(study.user_attrs["budget"]), float(trial.values[0]), per_method=per_method,
                          total=attrs.get("n_params"))
    _save_note(target, (PICK_HEAD + pick + "\n\n" if pick else "") + body)


def set_metric_names(study: optuna.Study, objectives) -> None:
    """Name the objectives (``val_accuracy``, ``n_params``) instead of "Objective 0"."""
    names = [METRIC_NAMES[o] for o in objectives]
    if study.metric_names != names:
        study.set_metric_names(names)


def study_note(study: optuna.Study, best: FrozenTrial, subnet: Subnet, count: ParamCount | None) -> str:
    attrs = study.user_attrs
    per_method = {m: best.user_attrs[f"params_{m}"] for m in METHODS if f"params_{m}" in best.user_attrs}
    total = count.total if count else int(best.user_attrs.get("n_params", sum(per_method.values())))
    budget = int(attrs["budget"])
    objectives = attrs.get("objectives", ["acc"])
    rule = ("Optuna's `best_trial` (ties on val accuracy: the trial the storage returns first)"
            if len(objectives) == 1 else
            "the Pareto front's most accurate trial (ties: fewer parameters, then the earlier trial)")
    record = attrs.get("rerank") or {}
    if record.get("winner") == best.number:
        rule = "the re-rank's winner: the best stand-alone val accuracy (`rerank` attribute), not the star"
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    top = max(complete, key=lambda t: (float(t.values[0]), -t.number), default=best)
    story = [
        f"- **the search's best val accuracy**: {float(top.values[0]):.4f}, trial {top.number}"
        + (" (the dashboard's star)" if len(objectives) == 1 else ""),
        f"- **the pick**: trial {best.number}. " + pick_reason(study, best),
        "- **why test accuracy differs**: the search's val accuracy is measured with weights inherited from "
        "the supernet (shared by every subnet), the re-rank's after a short stand-alone training on the train "
        "split; `retrain` trains the pick for its full recipe on train+val and scores the test split once. "
        "Different training lengths and different data give different figures; only the ranking is compared.",
    ]
    lines = [
        f"## {study.study_name}",
        "",
        f"- **budget**: {budget:,} trainable PEFT parameters (head excluded)",
        f"- **objectives**: {', '.join(METRIC_NAMES[o] for o in objectives)}",
        f"- **backbone**: {attrs.get('backbone', '?')}, {attrs.get('depth')} blocks",
        f"- **best** (what `best_subnet.yaml` and `export-subnet` take): {rule}",
        *story,
        "",
        f"### Chosen subnet: trial {best.number}, val accuracy {best.values[0]:.4f}, "
        f"{total:,} parameters ({total / budget:.0%} of the budget)",
        "",
        subnet_table(subnet, count, per_method),
        "",
    ]
    return "\n".join(lines)


def mark_best(study: optuna.Study, best: FrozenTrial, subnet: Subnet, count: ParamCount | None) -> None:
    """Mark the chosen subnet for the dashboard: the study's note and ``best_trial`` attribute,
    and the pick's own note (a trial that was the pick before and is no longer loses the mark)."""
    before = study.user_attrs.get("best_trial")
    if before != best.number:
        study.set_user_attr("best_trial", best.number)
    _save_note(study, study_note(study, best, subnet, count))
    _rewrite_trial_note(study, best, pick_reason(study, best), count)
    if isinstance(before, int) and before != best.number:
        earlier = [t for t in study.get_trials(deepcopy=False) if t.number == before]
        if earlier and earlier[0].values and "budget" in study.user_attrs:
            _rewrite_trial_note(study, earlier[0], "")


# ---- the recipe tuner's study (search/tune.py) ---------------------------------------------------

def recipe_lines(recipe: dict) -> list[str]:
    """A recipe as markdown list items: the rate, the weight decay, each family's multiplier."""
    lines = [f"- **lr** {recipe['lr']:.4g}", f"- **weight decay** {recipe['weight_decay']:.4g}"]
    lines += [f"- **lr multiplier, {f}** {m:.4g} (rate {recipe['lr'] * m:.4g})" for f, m in
              (recipe.get("lr_mult") or {}).items()]
    return lines


def save_tune_trial_note(trial: optuna.Trial, structure: str, sizes: str, recipe: dict) -> None:
    """The trial's structure and recipe, written when it starts (a pruned or failed trial keeps it)."""
    _save_note(trial, "\n".join([f"### {structure}: {sizes}", "", *recipe_lines(recipe), ""]))


def tune_study_note(study: optuna.Study, pick: FrozenTrial, sizes: str, selection: dict | None,
                    rule: str) -> str:
    """The tune study's note: the pick, its recipe, and the rule that took it (with the finalists'
    scores over the selection's partitions of train+val where it ran)."""
    lines = [f"## {study.study_name}", "", f"- **the pick**: trial {pick.number}, {pick.user_attrs['structure']} "
             f"({sizes}), study val accuracy {pick.value:.4f}", f"- **the rule**: {rule}", "",
             "### Its recipe", "", *recipe_lines(pick.user_attrs["recipe"]), ""]
    if selection:
        lines += ["### The finalists on the selection's train/val partitions of train+val", "",
                  "| trial | structure | study val | val accuracy per split or fold | mean | se |", "|---|---|---|---|---|---|"]
        for row in sorted(selection.values(), key=lambda r: -r["mean"]):
            se = f"{row['se']:.4f}" if row.get("se") is not None else "-"
            lines.append(f"| {row['trial']} | {row['structure']} | {row['study_val_accuracy']:.4f} | "
                         f"{', '.join(f'{a:.4f}' for a in row['scores'])} | {row['mean']:.4f} | {se} |")
        lines.append("")
    return "\n".join(lines)


def save_tune_study_note(study: optuna.Study, pick: FrozenTrial, sizes: str, selection: dict | None,
                         rule: str) -> None:
    _save_note(study, tune_study_note(study, pick, sizes, selection, rule))
