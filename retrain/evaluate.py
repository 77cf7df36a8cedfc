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

import torch

from unitune.data import DataConfig, build_dataset, build_loader, build_transform, load_image
from unitune.checks import check_input_file, check_output_dir
from unitune.errors import UniTuneError
from unitune.io import atomic_path, write_json_atomic
from unitune.train import evaluate, pick_device

from .export import load_export


def export_data_config(manifest: dict[str, Any], data: DataConfig | None, folder: str | os.PathLike) -> DataConfig:
    """The data section to use: the one given, or the one retrain recorded in the manifest."""
    if data is not None:
        return data
    recorded = (manifest.get("provenance") or {}).get("data")
    if not recorded:
        raise UniTuneError(f"{folder}: the manifest records no data section; give --config with a data section")
    return DataConfig.from_dict(recorded, source=f"{folder}/unitune.json: provenance.data")


def evaluate_export(folder: str | os.PathLike, data: DataConfig | None = None, split: str = "test",
                    out: str | os.PathLike | None = None, device: str = "auto") -> dict[str, Any]:
    """Accuracy, per-class accuracy and the confusion matrix (CSV and PNG in ``out``)."""
    folder = Path(folder)
    dev = pick_device(device)
    out = check_output_dir(Path(out) if out else folder.parent / f"eval_{split}")
    model, manifest = load_export(folder)
    data = export_data_config(manifest, data, folder)
    dataset = build_dataset(data, split, build_transform(manifest["data_config"], train=False, cfg=data))
    if dataset.num_classes != manifest["num_classes"]:
        raise UniTuneError(f"{folder}: the model has {manifest['num_classes']} classes, the {split} data "
                           f"has {dataset.num_classes}")
    result = evaluate(model.to(dev), build_loader(dataset, data, train=False, seed=0), dev, dataset.num_classes)
    confusion = result["confusion"]
    per_class = (confusion.diag().float() / confusion.sum(1).clamp(min=1).float()).tolist()
    names = list(manifest.get("class_names") or dataset.classes)
    summary = {"split": split, "accuracy": result["accuracy"], "images": result["n"],
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
    from matplotlib.figure import Figure  # no pyplot: no global state

    n = len(names)
    fig = Figure(figsize=(1.5 + 0.45 * n, 1.2 + 0.45 * n))
    ax = fig.add_subplot()
    image = ax.imshow(confusion.numpy(), cmap="Blues")
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true", title=title)
    ax.set_xticklabels(names, rotation=90)
    ax.set_yticklabels(names)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=7)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


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
