"""Create the timm ViT backbone: from the hub, from a local weights file, or randomly initialised."""

from __future__ import annotations

import contextlib
from pathlib import Path

import timm
import torch
from timm.models.vision_transformer import VisionTransformer

from .errors import UniTuneError


def create_backbone(
    name: str,
    num_classes: int,
    pretrained: bool = False,
    weights: str | None = None,
    kwargs: dict | None = None,
    meta: bool = False,
) -> VisionTransformer:
    """A timm ``VisionTransformer`` with a fresh ``num_classes`` head.

    ``weights`` (a local safetensors / .npz / .pth file) goes through timm's
    ``pretrained_cfg_overlay`` so, as with hub weights, the head is replaced and the position
    embedding resized. ``meta=True`` builds on the meta device: shapes only, for counting.
    """
    from unitune.supernet.model import check_vit

    if not isinstance(name, str) or not timm.is_model(name):
        raise UniTuneError(f"backbone {name!r}: unknown timm model name (see timm.list_models('vit_*'))")
    kwargs = dict(kwargs or {})
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise UniTuneError(f"model.weights: file not found: {path}")
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    elif pretrained:
        kwargs.update(pretrained=True)
    device = torch.device("meta") if meta else contextlib.nullcontext()
    try:
        with device:
            model = timm.create_model(name, num_classes=num_classes, **kwargs)
    except (RuntimeError, ValueError, KeyError, AssertionError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if weights is not None:
            raise UniTuneError(f"model.weights: {weights} does not fit backbone {name!r}: {first}") from None
        if kwargs.get("pretrained"):
            raise UniTuneError(
                f"backbone {name!r}: could not load pretrained weights ({first}); "
                f"offline, give a local file with model.weights"
            ) from None
        raise UniTuneError(f"backbone {name!r}: timm could not build it with {kwargs}: {first}") from None
    return check_vit(model, f"backbone {name!r}")
