"""What a person reads in stock optuna-dashboard: markdown notes on trials and on the study.

The samplers search over ordinal *indices* into each method's ordered choices (``lora.01 = 2``
is the third LoRA rank of block 1), which is what searches well but not what a person reads. So
every evaluated trial carries a note (optuna-dashboard's note API, shown on the trial's page)
with the per-block *sizes* and parameter counts and the per-method totals, and the study carries
a note with the budget, the objectives, the rule for "best" and the chosen subnet.
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


def trial_note(number: int, subnet: Subnet, count: ParamCount, budget: int, accuracy: float | None) -> str:
    acc = f"val accuracy **{accuracy:.4f}**, " if accuracy is not None else ""
    return (f"### Trial {number}: {acc}{count.total:,} parameters "
            f"({count.total / budget:.0%} of the budget of {budget:,})\n\n"
            "Sizes per block (LoRA rank, adapter width, VPT tokens, SSF on/off); the sampler's "
            "parameters are indices into these choices.\n\n" + subnet_table(subnet, count) + "\n")


def save_trial_note(trial: optuna.Trial, subnet: Subnet, count: ParamCount, budget: int, accuracy: float | None) -> None:
    _save_note(trial, trial_note(trial.number, subnet, count, budget, accuracy))


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
    if (attrs.get("rerank") or {}).get("winner") == best.number:
        rule = "the re-rank's winner: the best stand-alone val accuracy (`rerank` attribute), not the star"
    lines = [
        f"## {study.study_name}",
        "",
        f"- **budget**: {budget:,} trainable PEFT parameters (head excluded)",
        f"- **objectives**: {', '.join(METRIC_NAMES[o] for o in objectives)}",
        f"- **backbone**: {attrs.get('backbone', '?')}, {attrs.get('depth')} blocks",
        f"- **best** (what `best_subnet.yaml` and `export-subnet` take): {rule}",
        "",
        f"### Chosen subnet: trial {best.number}, val accuracy {best.values[0]:.4f}, "
        f"{total:,} parameters ({total / budget:.0%} of the budget)",
        "",
        subnet_table(subnet, count, per_method),
        "",
    ]
    return "\n".join(lines)


def mark_best(study: optuna.Study, best: FrozenTrial, subnet: Subnet, count: ParamCount | None) -> None:
    """Mark the chosen subnet on the study (a note and a user attribute) for the dashboard."""
    if study.user_attrs.get("best_trial") != best.number:
        study.set_user_attr("best_trial", best.number)
    _save_note(study, study_note(study, best, subnet, count))
