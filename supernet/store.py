"""The trained supernet file: ``supernet.safetensors`` holds what was trained (PEFT weights at
their largest sizes and the head) and, as metadata, what is needed to rebuild the model around
it: backbone, classes, search space, data config. The frozen backbone is not in it; it comes
from the same pretrained source the run config names; its fingerprint (``backbone_sha256``,
:func:`~unitune.supernet.fingerprint.backbone_fingerprint`) is in the metadata."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from unitune.errors import UniTuneError
from unitune.io import atomic_path

from .fingerprint import backbone_fingerprint
from .model import PeftViT

FORMAT = "unitune-supernet/1"
# What the readers of the metadata index into: a file edited by hand is named, not a KeyError.
META_TYPES = {"backbone": str, "space": dict, "num_classes": int, "data_config": dict, "model": dict}


def save_supernet(path: str | os.PathLike, model: PeftViT, meta: dict[str, Any]) -> Path:
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.trainable_state_dict().items()}
    # The backbone the weights were trained on (a retrain on other weights recomputes DoRA's magnitude).
    metadata = {"format": FORMAT, "space": json.dumps(model.space.to_dict()),
                "backbone_sha256": json.dumps(backbone_fingerprint(model.vit))}
    metadata.update({k: json.dumps(v) for k, v in meta.items()})
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def read_supernet(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The trainable tensors and the decoded metadata of a supernet file."""
    path = Path(path)
    if not path.is_file():
        raise UniTuneError(f"{path}: supernet file not found (run `unitune supernet` first)")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # truncated or not a safetensors file
        raise UniTuneError(f"{path}: not a readable supernet file ({type(e).__name__}: {e})") from None
    if raw.get("format") != FORMAT:
        raise UniTuneError(f"{path}: not a unitune supernet file (format {raw.get('format')!r}, expected {FORMAT!r})")
    meta = {}
    for key, value in raw.items():
        try:
            meta[key] = value if key == "format" else json.loads(value)
        except json.JSONDecodeError as e:
            raise UniTuneError(f"{path}: metadata {key!r} is not JSON ({e.msg}); not a file unitune wrote") from None
    for key, kind in META_TYPES.items():
        if key not in meta:
            raise UniTuneError(f"{path}: metadata {key!r} missing; not a file unitune wrote")
        if not isinstance(meta[key], kind) or isinstance(meta[key], bool):
            raise UniTuneError(f"{path}: metadata {key!r} has the wrong type ({type(meta[key]).__name__}, "
                               f"expected {kind.__name__}); not a file unitune wrote")
    return tensors, meta


def check_compatible(meta: dict[str, Any], path: str | os.PathLike, backbone: str, space: dict[str, Any]) -> None:
    """A supernet trained for another backbone or search space cannot serve this run."""
    if meta.get("backbone") != backbone:
        raise UniTuneError(f"{path}: trained for backbone {meta.get('backbone')!r}, but this run uses {backbone!r}")
    if meta.get("space") != space:
        diff = sorted(k for k in set(space) | set(meta.get("space", {})) if space.get(k) != meta["space"].get(k))
        raise UniTuneError(f"{path}: trained with another search space (differs in {diff})")
