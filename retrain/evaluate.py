"""Use an export: evaluate it on a data split, predict labels for image files.

Both rebuild the preprocessing from the export's manifest (the timm data config the model was
trained with), so an export is scored exactly as retrain scored it.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from unitune.data import DataConfig, build_dataset, build_loader, build_transform, load_image
from unitune.checks import check_input_file, check_output_dir
from unitune.errors import UniTuneError
from unitune.io import atomic_path, inside, write_json_atomic
from unitune.engine.context import EXPORT_MANIFEST
from unitune.engine.train import evaluate, pick_device, round_metric

from .export import load_export


def export_data_config(manifest: dict[str, Any], data: DataConfig | None, folder: str | os.PathLike) -> DataConfig:
    """The data section to use: the one given, or the one retrain recorded in the manifest."""
    if data is not None:
        return data
    recorded = (manifest.get("provenance") or {}).get("data")
    if not recorded:
        raise UniTuneError(f"{folder}: the manifest records no data section; give --config with a data section")
    return DataConfig.from_dict(recorded, source=f"{folder}/{EXPORT_MANIFEST}: provenance.data")


def evaluate_export(folder: str | os.PathLike, data: DataConfig | None = None, split: str = "test",
                    out: str | os.PathLike | None = None, device: str = "auto") -> dict[str, Any]:
    """Accuracy, per-class accuracy and the confusion matrix (CSV and PNG in ``out``)."""
    folder = Path(folder)
    dev = pick_device(device)
    # The default lies beside the export, in its run folder: a link planted there is not followed out.
    out = check_output_dir(Path(out) if out else inside(folder.parent, folder.parent / f"eval_{split}"))
    model, manifest = load_export(folder)
    data = export_data_config(manifest, data, folder)
    dataset = build_dataset(data, split, build_transform(manifest["data_config"], train=False, cfg=data))
    if dataset.num_classes != manifest["num_classes"]:
        raise UniTuneError(f"{folder}: the model has {manifest['num_classes']} classes, the {split} data "
                           f"has {dataset.num_classes}")
    loader = build_loader(dataset, data, train=False, seed=0, device=dev)
    result = evaluate(model.to(dev), loader, dev, dataset.num_classes)
    confusion = result["confusion"]
    # Exact fractions of counts, rounded to 6 places (float32 division wrote 0.8918918967247009);
    # None for a class the split holds no image of (data.allow_missing_classes): not a 0 score.
    per_class = [round_metric(int(c) / int(t)) if int(t) else None for c, t in zip(confusion.diag(), confusion.sum(1))]
    names = list(manifest.get("class_names") or dataset.classes)
    summary = {"split": split, "accuracy": round_metric(result["accuracy"]), "images": result["n"],
               "correct": int(confusion.diag().sum()), "precision": "float32",
               "per_class_accuracy": dict(zip(names, per_class)),
               "recorded_test_accuracy": (manifest.get("provenance") or {}).get("test_accuracy")}
    write_json_atomic(out / "metrics.json", summary)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["true \\ predicted", *names])
    for name, row in zip(names, confusion.tolist()):
        writer.writerow([name, *row])
    with atomic_path(out / "confusion.csv") as tmp:
        tmp.write_text(buf.getvalue())
    _plot_confusion(confusion, names, out / "confusion.png", f"{split}: accuracy {result['accuracy']:.4f}")
    summary["out"] = str(out)
    return summary


def _plot_confusion(confusion: torch.Tensor, names: Sequence[str], path: Path, title: str) -> None:
    """Counts in each cell, coloured by the share of the true class (row) they hold, so a small
    class reads as clearly as a big one. Cell size and fonts follow the class count: 5 classes
    give a 4.5-inch square with 11-pt numbers, 37 classes 12 inches with 8-pt ones, 100 classes
    20 inches and no numbers."""
    from matplotlib.figure import Figure  # no pyplot: no global state

    n = len(names)
    counts = confusion.numpy()
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    side = max(4.5, min(20.0, (0.6 if n <= 10 else 0.32) * n))  # inches: 0.32 in a cell up to 62 classes
    cell_pt = side / max(n, 1) * 72  # points: fonts follow the cell
    label_pt = max(4.0, min(10.0, 0.45 * cell_pt))
    number_pt = max(4.0, min(11.0, 0.38 * cell_pt))
    longest = max((len(str(x)) for x in names), default=1)
    margin = 1.0 + 0.07 * min(longest, 30) * label_pt / 8
    fig = Figure(figsize=(side + margin + 1.2, side + margin + 0.6))
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), [str(x) for x in names], rotation=90 if longest > 3 else 0, fontsize=label_pt)
    ax.set_yticks(range(n), [str(x) for x in names], fontsize=label_pt)
    ax.set_xlabel("predicted", fontsize=11)
    ax.set_ylabel("true", fontsize=11)
    ax.set_title(title, fontsize=12)
    if n <= 40:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=number_pt,
                        color="white" if share[i, j] > 0.5 else "black")
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
    bar.set_label("share of the true class", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


@torch.no_grad()
def predict(folder: str | os.PathLike, images: Sequence[str | os.PathLike], top_k: int = 5,
            device: str = "auto") -> list[dict[str, Any]]:
    """Top-k labels and probabilities for each image file."""
    if top_k < 1:
        raise UniTuneError(f"--top-k: expected a positive integer, got {top_k}")
    dev = pick_device(device)
    for p in images:  # a missing file or a FIFO fails before the export is read
        check_input_file(p, "image")
    model, manifest = load_export(folder)
    data = export_data_config(manifest, None, folder) if (manifest.get("provenance") or {}).get("data") else \
        DataConfig(source="synthetic")  # only resize mode matters here; synthetic needs no files
    transform = build_transform(manifest["data_config"], train=False, cfg=data)
    pixels = [transform(load_image(p)) for p in images]  # every file decoded before any work
    model.to(dev)
    probs = torch.softmax(model(torch.stack(pixels).to(dev)).float(), dim=-1).cpu()
    names = manifest.get("class_names") or [str(i) for i in range(manifest["num_classes"])]
    k = min(top_k, probs.shape[1])
    out = []
    for path, p in zip(images, probs):
        values, indices = p.topk(k)
        out.append({"image": str(path),
                    "top": [{"label": names[i], "index": int(i), "prob": float(v)} for v, i in zip(values, indices)]})
    return out
