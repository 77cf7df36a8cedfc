"""What PEFT weights were trained on top of: the frozen backbone's tensors and their fingerprint.

A save (``save_pretrained``'s folder, the supernet file) records both; a load compares them, so
PEFT weights trained on one backbone do not load silently into another of the same shapes (for
DoRA, whose magnitude is computed from the backbone weight, that would be a silent error).
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from .methods.layers import unwrap
from .methods.vit import classifier_heads


def backbone_items(vit: nn.Module) -> dict[str, torch.Tensor]:
    """The frozen backbone's tensors (parameters and persistent buffers) by their plain timm
    names, the classifier heads aside (training changes them), looking through any PEFT wrapper."""
    heads = set(classifier_heads(vit))
    out: dict[str, torch.Tensor] = {}

    def walk(module: nn.Module, prefix: str) -> None:
        module = unwrap(module)
        for name, t in module._parameters.items():
            if t is not None:
                out[prefix + name] = t
        for name, t in module._buffers.items():
            if t is not None and name not in module._non_persistent_buffers_set:
                out[prefix + name] = t
        for name, child in module._modules.items():
            if child is not None and not (module is vit and name in heads):
                walk(child, f"{prefix}{name}.")

    walk(vit, "")
    return out


def backbone_fingerprint(vit: nn.Module) -> str:
    """sha256 over the frozen backbone's tensors (:func:`backbone_items`), in name order, each as
    its name, dtype, shape and every byte.

    All bytes, not a sample: a fine-tuned backbone may differ from its parent in few values. On
    ViT-B/16 (85.8M parameters, 343 MB in fp32) it took 0.20-0.25 s on one CPU core, as long as
    sha256 over the bytes alone (the walk costs nothing), paid once per save and load; a GPU
    model is copied to the CPU tensor by tensor. A model in another dtype (bf16) has another
    fingerprint; one on the meta device (no values) hashes names, dtypes and shapes only."""
    h = hashlib.sha256()
    for name, t in sorted(backbone_items(vit).items()):
        t = t.detach()
        h.update(f"{name}|{str(t.dtype).removeprefix('torch.')}|{tuple(t.shape)}|".encode())
        if t.numel() and not t.is_meta:  # a meta model (shapes only) has no bytes: names, dtypes, shapes
            h.update(t.to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()
