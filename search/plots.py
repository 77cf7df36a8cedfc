"""Static PNG plots of a study (matplotlib's Agg canvas, no pyplot; written atomically).

- ``history.png``: val accuracy of every complete trial and the best so far, by trial number;
- ``pareto.png``: accuracy against trainable parameters for every complete trial, the Pareto
  front drawn over them and the budget as a vertical line (single- and multi-objective);
- ``sizes_heatmap.png``: the chosen size of every method in every block for the top trials,
  one panel per method (rows: trials best first; columns: blocks).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState

from unitune.io import atomic_path
from unitune.supernet.space import METHODS

from .export import pareto_trials, ranked_trials


def _figure(**kwargs):
    """A figure on its own Agg canvas: no pyplot, so no global backend or figure state is touched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return path


def plot_history(study: optuna.Study, path: str | os.PathLike) -> Path:
    trials = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number)
    fig = _figure(figsize=(7, 4))
    ax = fig.add_subplot(111)
    numbers = [t.number for t in trials]
    acc = [t.values[0] for t in trials]
    ax.scatter(numbers, acc, s=12, alpha=0.6, label="trial")
    if acc:
        ax.step(numbers, np.maximum.accumulate(acc), where="post", color="C3", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("val accuracy")
    ax.set_title(f"{study.study_name}: optimisation history")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, Path(path))


def plot_pareto(study: optuna.Study, path: str | os.PathLike) -> Path:
    trials = ranked_trials(study)
    front = pareto_trials(study)
    fig = _figure(figsize=(7, 4))
    ax = fig.add_subplot(111)
    ax.scatter([t.user_attrs.get("n_params", 0) for t in trials], [t.values[0] for t in trials], s=12, alpha=0.5,
               label="trial")
    if front:
        ax.plot([t.user_attrs.get("n_params", 0) for t in front], [t.values[0] for t in front], "o-", color="C3",
                label="Pareto front")
    budget = study.user_attrs.get("budget")
    if budget:
        ax.axvline(budget, color="k", linestyle="--", linewidth=1, label=f"budget {budget:,}")
    ax.set_xlabel("trainable parameters (head excluded)")
    ax.set_ylabel("val accuracy")
    ax.set_title(f"{study.study_name}: accuracy vs parameters")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, Path(path))


def plot_sizes_heatmap(study: optuna.Study, path: str | os.PathLike, top: int = 10) -> Path:
    from .study import study_encoding

    encoding = study_encoding(study)
    trials = ranked_trials(study)[:top]
    subnets = [encoding.decode(t.params) for t in trials]
    methods = [m for m in METHODS if len(encoding.space.choices(m)) > 1 or any(encoding.space.choices(m))]
    fig = _figure(figsize=(2.2 + 0.45 * encoding.depth * len(methods), 1.2 + 0.35 * max(1, len(trials))))
    for k, method in enumerate(methods):
        ax = fig.add_subplot(1, len(methods), k + 1)
        grid = np.array([s.sizes(method) for s in subnets], dtype=float).reshape(len(subnets), encoding.depth)
        vmax = max(encoding.space.choices(method)) or 1
        ax.imshow(grid, cmap="viridis", vmin=0, vmax=vmax, aspect="auto")
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, f"{int(v)}", ha="center", va="center", fontsize=7, color="w" if v < vmax / 2 else "k")
        ax.set_title(method)
        ax.set_xlabel("block")
        ax.set_xticks(range(encoding.depth))
        ax.set_yticks(range(len(trials)))
        ax.set_yticklabels([f"#{t.number} {t.values[0]:.3f}" for t in trials] if k == 0 else [])
    fig.suptitle(f"{study.study_name}: sizes of the top {len(trials)} trials")
    return _save(fig, Path(path))


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
