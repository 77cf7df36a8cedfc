"""``plots/curves.png``: every training stage's curves per epoch, from the stages' JSONL logs.

One column per stage that has a log in the run folder (pretrain, supernet, retrain), three
panels each: the training loss, the stage's accuracies (pretrain: train and val; supernet: val
of the largest and smallest subnet; retrain, which has no val split: train), and the learning
rate at each epoch's end. Redrawn, atomically, whenever a stage ends and by ``unitune run``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .io import atomic_path

# The stages' logs, relative to the run folder (pretrain.py, unitune/engine/supernet_train.py, retrain/train.py
# name them; not imported from there, as those modules import this one's caller).
STAGE_LOGS = {"pretrain": "pretrain/log.jsonl", "supernet": "supernet_log.jsonl", "retrain": "retrain_log.jsonl"}
CURVES_FILE = "plots/curves.png"
ACCURACIES = {"pretrain": ("train_acc", "val_acc"), "supernet": ("val_acc_largest", "val_acc_smallest"),
              "retrain": ("train_acc",)}


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    text = Path(path).read_text() if Path(path).is_file() else ""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def write_curves(run_dir: str | os.PathLike) -> Path | None:
    """Draw ``run_dir/plots/curves.png`` from the stage logs there; None when there is none."""
    run_dir = Path(run_dir)
    logs = {stage: read_log(run_dir / name) for stage, name in STAGE_LOGS.items()}
    logs = {stage: records for stage, records in logs.items() if records}
    if not logs:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(4.2 * len(logs), 7.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, len(logs), squeeze=False, sharex="col")
    for col, (stage, records) in enumerate(logs.items()):
        epochs = [r["epoch"] + 1 for r in records]
        loss_ax, acc_ax, lr_ax = axes[:, col]
        loss_ax.plot(epochs, [r.get("loss") for r in records], marker="o", markersize=3, color="C3")
        loss_ax.set_title(f"{stage} ({len(records)} epoch{'s' if len(records) != 1 else ''})")
        loss_ax.set_ylabel("training loss")
        shown = [key for key in ACCURACIES[stage] if any(key in r for r in records)]
        for k, key in enumerate(shown):
            acc_ax.plot(epochs, [r.get(key) for r in records], marker="o", markersize=3, color=f"C{k}", label=key)
        acc_ax.set_ylabel("accuracy")
        if shown:
            acc_ax.legend(loc="lower right", fontsize="small", frameon=False)
        if any("lr" in r for r in records):
            lr_ax.plot(epochs, [r.get("lr") for r in records], marker="o", markersize=3, color="C2")
            lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        else:  # a log written before the stage recorded its learning rate
            lr_ax.text(0.5, 0.5, "learning rate not logged", ha="center", va="center", transform=lr_ax.transAxes)
        lr_ax.set_ylabel("learning rate (epoch end)")
        lr_ax.set_xlabel("epoch")
        for ax in (loss_ax, acc_ax, lr_ax):
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs
        if len(epochs) == 1:  # one point: matplotlib would span 0.96 to 1.04
            lr_ax.set_xlim(epochs[0] - 1, epochs[0] + 1)
    fig.tight_layout()
    path = run_dir / CURVES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path
