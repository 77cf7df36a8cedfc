"""Static PNG plots of a study (matplotlib's Agg canvas, no pyplot; written atomically).

- ``history.png``: val accuracy of every complete trial and the best so far, by trial number;
- ``pareto.png``: accuracy against trainable parameters for every complete trial, the Pareto
  front drawn over them and the budget as a vertical line (single- and multi-objective);

both mark the pick (the trial ``best_subnet.yaml`` holds, :mod:`.ranking`) with a gold star,
labelled with the figure that decided it (the re-rank's stand-alone val accuracy, or its val
accuracy), beside the search's best val accuracy, so the plots tell "best" as the summary does;
- ``sizes_heatmap.png``: the chosen size of every method in every block for the top trials,
  one panel per method (rows: trials best first; columns: blocks), a column per global method
  (a model-level method such as ``ssf_global``) and each row's parameter count.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState

from unitune.io import atomic_path
from unitune.supernet.methods import METHODS

from .ranking import RERANK_ATTR, pareto_trials, ranked_trials
from .study import study_encoding


def new_figure(**kwargs):
    """A figure on its own Agg canvas: no pyplot, so no global backend or figure state is touched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: Path) -> Path:
    """``fig`` as a PNG at ``path``, written atomically (these plots, the re-rank's and compare's)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return path


def _legend_outside(ax) -> None:
    """The legend right of the axes, where it covers no point (inside, "best" still hid some)."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)


def _thousands():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda x, _: f"{x:,.0f}")


def pick_label(study: optuna.Study, pick) -> str:
    """``pick: trial 52, stand-alone val 0.6089 (re-rank)`` or ``pick: trial 39, val 0.7709``."""
    record = study.user_attrs.get(RERANK_ATTR) or {}
    if record.get("winner") == pick.number:
        row = next((r for r in record.get("candidates", []) if r["trial"] == pick.number), None)
        if row is not None:
            return f"pick: trial {pick.number}, stand-alone val {row['standalone_val_accuracy']:.4f} (re-rank)"
    return f"pick: trial {pick.number}, val {pick.values[0]:.4f}"


def _mark_pick(ax, study: optuna.Study, x: float, pick) -> None:
    ax.scatter([x], [pick.values[0]], marker="*", s=160, color="gold", edgecolor="k", zorder=5,
               label=pick_label(study, pick))


def plot_history(study: optuna.Study, path: str | os.PathLike) -> Path:
    return save_figure(history_figure(study), Path(path))


def history_figure(study: optuna.Study):
    trials = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number)
    fig = new_figure(figsize=(7, 4))
    ax = fig.add_subplot(111)
    numbers = [t.number for t in trials]
    acc = [t.values[0] for t in trials]
    ax.scatter(numbers, acc, s=12, alpha=0.6, label="trial")
    if acc:
        top = max(acc)
        ax.step(numbers, np.maximum.accumulate(acc), where="post", color="C3",
                label=f"best so far (best val {top:.4f}, trial {numbers[acc.index(top)]})")
        pick = ranked_trials(study)[0]
        _mark_pick(ax, study, pick.number, pick)
    ax.set_xlabel("trial")
    ax.set_ylabel("val accuracy")
    ax.set_title(f"{study.study_name}: optimisation history")
    _legend_outside(ax)
    ax.grid(alpha=0.3)
    return fig


def plot_pareto(study: optuna.Study, path: str | os.PathLike) -> Path:
    return save_figure(pareto_figure(study), Path(path))


def pareto_figure(study: optuna.Study):
    trials = ranked_trials(study)
    front = pareto_trials(study)
    fig = new_figure(figsize=(7, 4))
    ax = fig.add_subplot(111)
    ax.scatter([t.user_attrs.get("n_params", 0) for t in trials], [t.values[0] for t in trials], s=12, alpha=0.5,
               label="trial")
    if front:
        ax.plot([t.user_attrs.get("n_params", 0) for t in front], [t.values[0] for t in front], "o-", color="C3",
                label="Pareto front")
    budget = study.user_attrs.get("budget")
    if budget:
        ax.axvline(budget, color="k", linestyle="--", linewidth=1, label=f"budget {budget:,}")
    if trials:  # the trial best_subnet.yaml took (ranked_trials puts it first)
        _mark_pick(ax, study, trials[0].user_attrs.get("n_params", 0), trials[0])
    ax.set_xlabel("trainable parameters (head excluded)")
    ax.set_ylabel("val accuracy")
    ax.set_title(f"{study.study_name}: accuracy vs parameters")
    ax.xaxis.set_major_formatter(_thousands())
    _legend_outside(ax)
    ax.grid(alpha=0.3)
    return fig


def plot_sizes_heatmap(study: optuna.Study, path: str | os.PathLike, top: int = 10) -> Path:
    """The top trials' sizes: one panel per method (columns: blocks), a column for every global
    method (``ssf_global``, any model-level method), and each row's parameter count (and share of the budget) on the right."""
    return save_figure(sizes_heatmap_figure(study, top), Path(path))


def sizes_heatmap_figure(study: optuna.Study, top: int = 10):
    encoding = study_encoding(study)
    trials = ranked_trials(study)[:top]
    subnets = [encoding.decode_trial(t) for t in trials]
    space = encoding.space
    shown = [m for m in METHODS.values() if len(space.choices(m.name)) > 1 or any(space.choices(m.name))]
    methods = [m.name for m in shown if m.site == "block"]
    globals_ = [m.name for m in shown if m.site == "model"]
    depth, rows = encoding.depth, max(1, len(trials))
    widths = [depth] * len(methods) + [1] * len(globals_) + [2.4]
    cell = 0.42
    fig = new_figure(figsize=(2.0 + cell * sum(widths) + 0.3 * len(widths), 1.6 + cell * rows))
    grid = fig.add_gridspec(1, len(widths), width_ratios=widths, wspace=0.12)
    panels = [(m, [s.sizes(m) for s in subnets], space.choices(m), range(depth)) for m in methods]
    panels += [(g, [[s.sizes(g)] for s in subnets], space.choices(g), ["on" if METHODS[g].on_off else "size"])
               for g in globals_]
    budget = study.user_attrs.get("budget")
    for k, (name, sizes, choices, columns) in enumerate(panels):
        ax = fig.add_subplot(grid[0, k])
        values = np.array(sizes, dtype=float).reshape(len(subnets), len(columns))
        vmax = max(choices) or 1
        ax.imshow(values, cmap="viridis", vmin=0, vmax=vmax, aspect="auto")
        for (i, j), v in np.ndenumerate(values):
            ax.text(j, i, f"{int(v)}", ha="center", va="center", fontsize=8, color="w" if v < vmax / 2 else "k")
        ax.set_title(METHODS[name].heading, fontsize=10)
        ax.set_xlabel("block" if METHODS[name].site == "block" else "")
        ax.set_xticks(range(len(columns)), [str(c) for c in columns], fontsize=8)
        ax.set_yticks(range(len(trials)))
        ax.set_yticklabels([f"#{t.number}  acc {t.values[0]:.3f}" for t in trials] if k == 0 else [], fontsize=8)
    ax = fig.add_subplot(grid[0, -1])  # the parameter count of each row
    ax.set_xlim(0, 1)
    ax.set_ylim(rows - 0.5, -0.5)
    ax.set_axis_off()
    ax.set_title("parameters", fontsize=10)
    for i, t in enumerate(trials):
        n = int(t.user_attrs.get("n_params", 0))
        share = f" ({n / budget:.0%})" if budget else ""
        ax.text(0.05, i, f"{n:,}{share}", ha="left", va="center", fontsize=8)
    fig.suptitle(f"{study.study_name}: sizes of the top {len(trials)} trials (best first)"
                 + (f", budget {budget:,}" if budget else ""), fontsize=11)
    return fig


def save_plots(study: optuna.Study, out_dir: str | os.PathLike, top: int = 10) -> dict[str, Path]:
    """All plots into ``out_dir``; nothing is drawn for a study without a complete trial."""
    out_dir = Path(out_dir)
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return {}
    return {
        "history": plot_history(study, out_dir / "history.png"),
        "pareto": plot_pareto(study, out_dir / "pareto.png"),
        "sizes_heatmap": plot_sizes_heatmap(study, out_dir / "sizes_heatmap.png", top=top),
    }
