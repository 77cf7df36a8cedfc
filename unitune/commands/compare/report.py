"""The report of a comparison: ``results.csv``, the VTAB-style ``table.md`` (mean ± std over
seeds per task, the group means and their mean) and ``accuracy_vs_params.png``."""

from __future__ import annotations

import itertools
import math
import statistics
from pathlib import Path
from typing import Any, Sequence

from unitune.engine.context import RunLayout
from unitune.io import read_json, write_text_atomic
from .plan import CSV_COLUMNS, CSV_FILE, GROUP_ORDER, PLOT_FILE, TABLE_FILE, Plan, describe, method_rows  # noqa: F401 (describe: re-exported)

QUICK_NOTE = "--quick: a smoke test; these numbers mean nothing"
MARKERS = "osD^vPX<>hp*"  # hollow and distinct, so methods that land on one point both show


def plural(n: int, word: str) -> str:
    """``1 seed``, ``3 seeds``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _pm(mean_std: tuple[float, float], n: int, fmt: str = ".1f") -> str:
    """``mean ± std`` of ``n`` values; the mean alone when ``n`` is 1 (one value has no spread:
    a ``± 0.0`` there read as a measured zero spread)."""
    mean, std = mean_std
    return f"{mean:{fmt}} ± {std:.1f}" if n >= 2 else f"{mean:{fmt}}"


def results_frame(rows: list[dict[str, Any]], tasks: Sequence[str], groups: dict[str, str], seeds: Sequence[int],
                  methods: Sequence[str]):
    """The cells as a pandas DataFrame, one row per (task, method, seed) in that nested order (the
    plan's), with the task's ``group`` (from ``groups``) and ``accuracy`` (test accuracy in %).
    A cell missing from ``rows`` is a ``KeyError`` naming it; of two rows of one cell the last counts."""
    import pandas as pd

    have = {(r["task"], r["method"], r["seed"]) for r in rows}
    cells = list(itertools.product(tasks, methods, seeds))
    missing = [c for c in cells if c not in have]
    if missing:
        raise KeyError(missing[0])
    frame = pd.DataFrame(rows).drop_duplicates(["task", "method", "seed"], keep="last")
    frame = frame.set_index(["task", "method", "seed"]).loc[cells].reset_index()
    frame["group"] = frame["task"].map(groups)
    frame["accuracy"] = 100 * frame["test_accuracy"]
    return frame


def _fmean(values) -> float:
    """``statistics.fmean`` (exactly rounded, whatever the order) of a column: the report's numbers
    are the ones the table showed before pandas held the cells."""
    return statistics.fmean(values.tolist())


def summarise(rows: list[dict[str, Any]], tasks: Sequence[str], groups: dict[str, str], seeds: Sequence[int],
              methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per method: mean +- std over seeds per task, per group, and of the mean of group means
    (computed per seed, then averaged: its std is the seed-to-seed spread of the headline number).
    ``params`` (no head) is the mean over tasks and seeds; ``params_per_task`` and
    ``params_with_head`` are per task (each task's head has its own size: their mean is no model's)."""
    frame = results_frame(rows, tasks, groups, seeds, methods)
    used = {groups[t] for t in tasks}
    present = [g for g in GROUP_ORDER if g in used] + sorted(used - set(GROUP_ORDER))
    out = {}
    for m, cells in frame.groupby("method", sort=False):  # sort=False: the plan's order throughout
        by_task = cells.groupby("task", sort=False)
        # per group and seed, the mean over the group's tasks; then per seed the mean of the group means
        group_seed = cells.groupby(["group", "seed"], sort=False)["accuracy"].agg(_fmean)
        headline = group_seed.loc[present].groupby(level="seed", sort=False).agg(_fmean)
        out[m] = {"tasks": {t: _mean_std(c["accuracy"].tolist()) for t, c in by_task},
                  "groups": {g: _mean_std(group_seed.loc[g].tolist()) for g in present},
                  "mean_of_groups": _mean_std(headline.tolist()),
                  "params": _fmean(cells["params"]),
                  "params_per_task": {t: _fmean(c["params"]) for t, c in by_task},
                  "params_with_head": {t: _fmean(c["params_with_head"]) for t, c in by_task},
                  "seconds": _fmean(cells["seconds"])}
    return out


def head_sizes(rows: list[dict[str, Any]], tasks: Sequence[str]) -> dict[str, list[int]]:
    """Per task, the classification head's parameter count (with head minus without), as every
    row of the task trained it: one value per task, unless rows disagree."""
    return {t: sorted({int(r["params_with_head"]) - int(r["params"]) for r in rows if r["task"] == t})
            for t in tasks}


def format_table(summary: dict[str, dict[str, Any]], tasks: Sequence[str], groups: dict[str, str],
                 n_seeds: int) -> str:
    """The VTAB-style table; a spread (± std over seeds) only with two seeds or more."""
    first = next(iter(summary.values()))
    group_names = list(first["groups"])
    head = ["method", "params (no head)"] + [f"{t} ({groups[t][:4]}.)" for t in tasks] + \
        [f"{g} mean" for g in group_names] + ["mean of groups"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, s in summary.items():
        differ = len(set(s["params_per_task"].values())) > 1  # the search picks per task
        cells = [m, f"{s['params']:,.0f}" + (" (mean)" if differ else "")]
        cells += [_pm(s["tasks"][t], n_seeds) for t in tasks]
        cells += [_pm(s["groups"][g], n_seeds) for g in group_names]
        cells.append(f"**{_pm(s['mean_of_groups'], n_seeds)}**")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_notes(seeds: Sequence[int], epochs: int, source: str, heads: dict[str, list[int]],
                 summary: dict[str, dict[str, Any]], pretrain_info: dict[str, Any] | None = None) -> list[str]:
    """What the table's numbers are: seeds, epochs, parameter counts and heads, the pretraining."""
    seeds = list(seeds)
    spread = (f"mean ± std over {plural(len(seeds), 'seed')} {seeds}" if len(seeds) >= 2
              else f"one seed ({seeds[0]}), so no spread")
    notes = [f"Test accuracy % after the last epoch, {spread}; {plural(epochs, 'epoch')} on "
             f"trainval for every row ({source})."]
    differ = [m for m, s in summary.items() if len(set(s["params_per_task"].values())) > 1]
    notes.append("params: trainable parameters without the classification head" +
                 (f" (mean over tasks for {', '.join(differ)}: its count differs per task)" if differ else "") +
                 "; every row also trains the task's head: " +
                 ", ".join(f"{t} {'/'.join(f'{h:,}' for h in hs)}" for t, hs in heads.items()) + ".")
    if pretrain_info:
        notes.append(f"Backbone pretrained once on {pretrain_info['source'].get('source')} "
                     f"(source val accuracy {100 * pretrain_info['source_val_accuracy']:.1f}%, "
                     f"{pretrain_info['seconds']} s).")
    return notes


def accuracy_figure(summary: dict[str, dict[str, Any]], title: str, n_seeds: int, quick: bool = False):
    """The mean of group means against trainable parameters (no head: heads differ per task), one
    legend entry per method; the figure is returned unsaved, for :func:`save_plot` and the tests."""
    import math

    from unitune.search.plots import new_figure

    fig = new_figure(figsize=(7.2, 4.4))
    ax = fig.add_subplot(111)
    for i, (m, s) in enumerate(summary.items()):
        mean, std = s["mean_of_groups"]
        ax.errorbar(s["params"], mean, yerr=std if n_seeds >= 2 else None, fmt=MARKERS[i % len(MARKERS)],
                    markersize=8, markerfacecolor="none", markeredgewidth=1.5, color=f"C{i % 10}", capsize=4, label=m)
    positive = [s["params"] for s in summary.values() if s["params"] > 0]
    if len(positive) < len(summary):  # the linear probe trains 0 (head aside): linear up to a decade, log above
        low = math.floor(math.log10(min(positive))) if positive else 0
        high = math.floor(math.log10(max(positive))) if positive else 0
        ax.set_xscale("symlog", linthresh=10.0 ** low)
        ax.set_xticks([0] + [10.0 ** k for k in range(low, high + 1)])  # the stock ticks crowd 0
    else:
        ax.set_xscale("log")
    ax.set_xlabel("trainable parameters without the head (mean over tasks)")
    ax.set_ylabel("test accuracy %, mean of group means" + ("\n(bars: ± std over seeds)" if n_seeds >= 2 else ""))
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False, title="method")
    if quick:
        fig.suptitle(QUICK_NOTE, color="red", fontweight="bold", fontsize=10)
    return fig


def stamp_quick(path: Path) -> None:
    """Write the --quick note in red in a band above a PNG drawn elsewhere (the search stage's
    plots), and as its ``unitune`` text chunk. Called once per drawing: the search redraws them."""
    from matplotlib import font_manager
    from PIL import Image, ImageDraw, ImageFont
    from PIL.PngImagePlugin import PngInfo

    from unitune.io import atomic_path

    with Image.open(path) as img:
        plot = img.convert("RGB")
    band = 30
    out = Image.new("RGB", (plot.width, plot.height + band), "white")
    out.paste(plot, (0, band))
    font = ImageFont.truetype(font_manager.findfont("DejaVu Sans:bold"), 15)
    ImageDraw.Draw(out).text((out.width // 2, band // 2), QUICK_NOTE, fill=(220, 0, 0), font=font, anchor="mm")
    info = PngInfo()
    info.add_text("unitune", QUICK_NOTE)
    with atomic_path(path) as tmp:
        out.save(tmp, format="PNG", pnginfo=info)


def save_plot(summary: dict[str, dict[str, Any]], path: Path, title: str, n_seeds: int, quick: bool = False) -> None:
    from unitune.search.plots import save_figure

    save_figure(accuracy_figure(summary, title, n_seeds, quick), path)  # bbox "tight": no clipped label


def paired_vs_single(rows: list[dict[str, Any]], tasks: Sequence[str], seeds: Sequence[int],
                     methods: Sequence[str], who: str = "search") -> list[dict[str, Any]]:
    """``who`` (the search, or its soup) minus each single method, paired by task and seed (the
    same retrain seed, data and test split on both sides), the strongest single method first.

    "Strongest" is the one with the highest mean test accuracy over every task and seed: picked on
    test, which favours the baseline, never the search, so it is a fair bar to clear.
    """
    if who not in methods:
        return []
    by = {(r["task"], r["method"], r["seed"]): 100 * r["test_accuracy"] for r in rows}
    pairs = [(t, s) for t in tasks for s in seeds]
    out = []
    for m in method_rows(methods):
        diffs = [by[t, who, s] - by[t, m, s] for t, s in pairs]
        mean, std = _mean_std(diffs)
        out.append({"method": m, "baseline_mean": statistics.fmean(by[t, m, s] for t, s in pairs),
                    "mean_diff": mean, "std_diff": std, "n": len(diffs),
                    "wins": sum(d > 0 for d in diffs), "ties": sum(d == 0 for d in diffs),
                    "per_task": {t: statistics.fmean(by[t, who, s] - by[t, m, s] for s in seeds)
                                 for t in tasks}})
    return sorted(out, key=lambda r: -r["baseline_mean"])


def paired_vs_best(rows: list[dict[str, Any]], tasks: Sequence[str], seeds: Sequence[int],
                   methods: Sequence[str], who: str, every_row: bool = False) -> dict[str, Any] | None:
    """``who`` minus the per-task best single method (the single-method row with the highest mean
    test accuracy on that task: chosen on test, in the baseline's favour), paired by task and
    seed: the mean difference, its standard error (std / sqrt(n)) and whether it clears two of
    them, the decision rule of benchmarks/tune_suite.sh. ``every_row``: the best of every
    baseline row instead, full fine-tuning and the linear probe included (tuned, full fine-tuning
    can be the best row: DINOv2's count, RESULTS).

    ``held_out`` (two or more seeds): the same difference against the best chosen, for each seed,
    on the *other* seeds' test accuracy. Chosen on all seeds, the bar is the maximum of noisy
    means and carries its own luck (the winner's curse); left out, the seed it is judged on did not
    choose it, so the gap between the two figures is that luck and ``held_out`` the fairer bar."""
    singles = [*method_rows(methods), *(m for m in ("linear", "full") if every_row and m in methods)]
    if who not in methods or not singles:
        return None
    by = {(r["task"], r["method"], r["seed"]): 100 * r["test_accuracy"] for r in rows}

    def strongest(t: str, on: Sequence[int]) -> str:  # ties: the order of the rows
        return max(singles, key=lambda m: (statistics.fmean(by[t, m, s] for s in on), -singles.index(m)))

    best = {t: strongest(t, seeds) for t in tasks}
    diffs = [by[t, who, s] - by[t, best[t], s] for t in tasks for s in seeds]
    out = {"who": who, "best": best, "every_row": every_row, **_paired_figures(diffs)}
    if len(seeds) > 1:
        out["held_out"] = _paired_figures([by[t, who, s] - by[t, strongest(t, [x for x in seeds if x != s]), s]
                                           for t in tasks for s in seeds])
    return out


def _paired_figures(diffs: list[float]) -> dict[str, Any]:
    """Mean paired difference, its standard error, wins and the two-standard-error rule."""
    mean, std = _mean_std(diffs)
    se = std / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
    return {"mean_diff": mean, "se": se, "n": len(diffs), "wins": sum(d > 0 for d in diffs),
            "clears_two_se": bool(len(diffs) > 1 and mean > 0 and mean >= 2 * se)}


def tuning_rows(plan: Plan) -> list[dict[str, Any]]:
    """Each tuned (task, row): its pick and cost (``tune_info.json``); empty without compare.tune."""
    from .tuning import TUNE_INFO, TUNED_ROWS_SKIP, tune_folder

    if plan.tune is None:
        return []
    out = []
    for t in plan.tasks:
        for m in plan.methods:
            path = tune_folder(plan, t, m) / TUNE_INFO
            if m not in TUNED_ROWS_SKIP and path.is_file():
                out.append(read_json(path))
    return out


WARM_NOTE = "; the search row's study starts from the single-method rows' trials, their CPU-s in its cost"


def format_tuning(infos: list[dict[str, Any]], plan: Plan) -> str:
    """The table of what each row's study chose and what it cost."""
    from unitune.search.selection import Selection

    if not infos:
        return ""
    cfg = plan.tune
    lines = [f"Every row tuned alike (compare.tune: {plural(cfg.trials, 'trial')} of up to {plural(cfg.epochs, 'epoch')} "
             f"per task and "
             f"row, median pruning; the pick: the best mean val accuracy of {cfg.finalists} finalists over "
             f"{Selection(cfg.finalists, cfg.splits, cfg.kfold).describe()}{'' if cfg.splits else ' (off: the best trial)'}; "
             f"chosen on train/val only{WARM_NOTE if cfg.warm_start and 'search' in plan.methods else ''}):", "",
             "| task | row | pick | lr | weight decay | lr multipliers | val (selection mean ± se) | tune CPU-s |",
             "|---|---|---|---|---|---|---|---|"]
    for i in infos:
        r = i["recipe"]
        mult = ", ".join(f"{f} {v:.3g}" for f, v in (r.get("lr_mult") or {}).items()) or "-"
        sel = (f"{100 * i['selection_mean']:.1f} ± {100 * i['selection_se']:.1f}"
               if i.get("selection_mean") is not None and i.get("selection_se") is not None
               else f"{100 * i['val_accuracy']:.1f}")
        pick = i["structure"] if i["structure"] == i["row"] else f"{i['structure']}: {i.get('sizes', '?')}"
        cost = f"{i['cpu_seconds']:,.0f}"
        if (i.get("imported") or {}).get("trials"):
            cost += f" (of it {i['imported']['cpu_seconds']:,.0f} imported, {i['imported']['trials']} trials)"
        lines.append(f"| {i['task']} | {i['row']} | {pick} | {r['lr']:.3g} | {r['weight_decay']:.3g} | "
                     f"{mult} | {sel} | {cost} |")
    per_row: dict[str, float] = {}
    for i in infos:
        per_row[i["row"]] = per_row.get(i["row"], 0.0) + i["cpu_seconds"]
    lines += ["", "Tuning CPU-s per row (all tasks): " + ", ".join(f"{m} {v:,.0f}" for m, v in per_row.items())]
    return "\n".join(lines) + "\n"


def format_decision(decisions: list[dict[str, Any]]) -> str:
    lines = []
    for d in decisions:
        what = "row (full fine-tuning and the linear probe included)" if d.get("every_row") else "single method"
        lines.append(f"{d['who']} minus the per-task best {what} ({', '.join(f'{t}: {m}' for t, m in d['best'].items())}"
                     f"; chosen on test, in the baseline's favour): {d['mean_diff']:+.2f}"
                     + (f" ± {d['se']:.2f} (se)" if d["n"] > 1 else " (one pair: no standard error)")
                     + f" points over {plural(d['n'], 'task x seed pair')}, {d['wins']} wins; "
                     f"{'clears' if d['clears_two_se'] else 'does not clear'} two standard errors."
                     + (f" Against the best chosen for each seed on the other seeds' test (the bar without the "
                        f"luck of a maximum over noisy means): {h['mean_diff']:+.2f} ± {h['se']:.2f} (se)."
                        if (h := d.get("held_out")) else ""))
    return "\n".join(lines) + ("\n" if lines else "")


def search_trust(plan: Plan) -> dict[str, dict[str, Any]]:
    """Per task, what the search's re-rank measured (``best_subnet.yaml``'s meta): Kendall's tau
    between the supernet's inherited val accuracy and stand-alone val accuracy, and the pick;
    ``fitness`` says why a search without a re-rank had none."""
    from unitune.io import read_yaml

    out: dict[str, dict[str, Any]] = {}
    for t in plan.tasks:
        path = RunLayout(plan.search_dir(t)).best_subnet
        if "search" in plan.methods and path.is_file():
            from unitune.supernet import Subnet

            meta = read_yaml(path).get("meta") or {}
            out[t] = {k: meta.get(k) for k in ("kendall_tau", "kendall_n", "kendall_ci95", "inherited_val_accuracy",
                                               "standalone_val_accuracy", "n_params")}
            out[t]["pick"] = describe(Subnet.load(path))
            out[t]["fitness"] = plan.task_runs[t].search.fitness
    return out


def format_paired(paired: list[dict[str, Any]], trust: dict[str, dict[str, Any]], who: str = "search") -> str:
    lines = []
    if paired:
        n = paired[0]["n"]  # pairs (task x seed), the same for every method
        lines += [f"{'Search' if who == 'search' else 'The ' + who} minus each single method, paired by task and seed "
                  f"(test accuracy points; the strongest single method first):", "",
                  f"| vs | its mean | {who} - it{', mean ± std' if n >= 2 else ''} | {who} wins | " +
                  " | ".join(paired[0]["per_task"]) + " |", "|" + "---|" * (4 + len(paired[0]["per_task"]))]
        for r in paired:
            lines.append(f"| {r['method']} | {r['baseline_mean']:.1f} | {_pm((r['mean_diff'], r['std_diff']), n, '+.1f')} "
                         f"| {r['wins']}/{r['n']} | " + " | ".join(f"{v:+.1f}" for v in r["per_task"].values()) + " |")
    if trust:
        lines += ["", "The search's pick per task (`best_subnet.yaml`; with compare.tune the search row retrains "
                  "its tuned pick instead, in the tuning table below), and how far the supernet's ranking held "
                  "(its re-rank, on val: Kendall tau between inherited and stand-alone val accuracy):", "",
                  "| task | tau (n, 95% CI) | pick's inherited val | pick's stand-alone val | pick's params | pick |",
                  "|---|---|---|---|---|---|"]
        for t, v in trust.items():
            acc = [f"{100 * v[k]:.1f}" if v.get(k) is not None else "-"
                   for k in ("inherited_val_accuracy", "standalone_val_accuracy")]
            params = f"{v['n_params']:,}" if v.get("n_params") is not None else "-"
            lines.append(f"| {t} | {_tau_text(v)} | {acc[0]} | {acc[1]} | {params} | {v['pick']} |")
    return "\n".join(lines) + "\n" if lines else ""


def _tau_text(v: dict[str, Any]) -> str:
    """The re-rank's tau, or why there is none: no re-rank ran (its figures are absent from the
    pick's meta), or one ran and tau is undefined (search/rerank.py's ``kendall``)."""
    if v.get("kendall_n") is None:
        if v.get("fitness") == "standalone":
            return "n/a (stand-alone fitness: no supernet ranking to check)"
        return "n/a (no re-rank)"
    n = v["kendall_n"]
    if v.get("kendall_tau") is None:
        why = "fewer than 3 subnets" if n < 3 else "the inherited or the stand-alone scores all equal"
        return f"undefined (n={n}: {why})"
    ci = v.get("kendall_ci95")
    ci = f", 95% CI [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""
    return f"{v['kendall_tau']:.2f} (n={n}{ci})"


def results_csv(rows: list[dict[str, Any]]) -> str:
    """``results.csv``: one line per cell, the columns of :data:`CSV_COLUMNS`. The frame holds the
    values as objects, so each is written as the cell file has it (an accuracy of ``1`` stays ``1``,
    a missing ``stage_seconds`` is empty)."""
    import pandas as pd

    tuned = any(r.get("recipe") is not None for r in rows)  # compare.tune: the chosen recipe and its cost too
    frame = pd.DataFrame(rows, columns=list(CSV_COLUMNS) + (["recipe", "tune_cpu_seconds"] if tuned else []),
                         dtype=object)
    return frame.to_csv(index=False, lineterminator="\n")


def write_report(plan: Plan, pretrain_info: dict[str, Any] | None = None) -> dict[str, Any]:
    rows = [plan.read_cell(*c) for c in plan.cells]
    write_text_atomic(plan.out / CSV_FILE, results_csv(rows))
    summary = summarise(rows, plan.tasks, plan.groups, plan.seeds, plan.methods)
    table = format_table(summary, plan.tasks, plan.groups, len(plan.seeds))
    if plan.quick:  # first, in the file and on stdout: nobody should quote these
        table = f"**{QUICK_NOTE}** (the config's compare.quick settings).\n\n" + table
    notes = format_notes(plan.seeds, plan.base.retrain.epochs, plan.base.source, head_sizes(rows, plan.tasks),
                         summary, pretrain_info)
    paired = paired_vs_single(rows, plan.tasks, plan.seeds, plan.methods)
    trust = search_trust(plan)
    text = table + "\n" + "\n".join(notes) + "\n\n" + format_paired(paired, trust)
    soup_paired = paired_vs_single(rows, plan.tasks, plan.seeds, plan.methods, who="soup")
    if soup_paired:
        text += "\n" + format_paired(soup_paired, {}, who="soup")
    # against the best single method, then (where linear or full is a row) against every baseline row
    against = (False, True) if any(m in plan.methods for m in ("linear", "full")) else (False,)
    decisions = [d for every in against for w in ("search", "soup")
                 if (d := paired_vs_best(rows, plan.tasks, plan.seeds, plan.methods, w, every_row=every)) is not None]
    tuning = tuning_rows(plan)
    if decisions:
        text += "\n" + format_decision(decisions)
    if tuning:
        text += "\n" + format_tuning(tuning, plan)
    write_text_atomic(plan.out / TABLE_FILE, text)
    save_plot(summary, plan.out / PLOT_FILE,
              f"{plan.base.name}: {plural(len(plan.tasks), 'task')}, {plural(len(plan.seeds), 'seed')}",
              len(plan.seeds), plan.quick)
    return {"summary": summary, "table": table, "paired": paired, "trust": trust, "csv": plan.out / CSV_FILE,
            "table_file": plan.out / TABLE_FILE, "decisions": decisions, "tuning": tuning,
            "plot": plan.out / PLOT_FILE, "pretrain": pretrain_info}
