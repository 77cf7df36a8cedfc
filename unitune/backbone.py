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
    if (weights is not None or pretrained) and not meta:
        # Decide the backbone's fate (check_vit) on a shapes-only build before any weight is
        # downloaded or read: a refused family fails in a second, not after a download.
        create_backbone(name, num_classes, kwargs=kwargs, meta=True)
    if weights is not None:
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(Path(weights))))
    elif pretrained:
        kwargs.update(pretrained=True)
    device = torch.device("meta") if meta else contextlib.nullcontext()
    try:
        with device:
            model = timm.create_model(name, num_classes=num_classes, **kwargs)
    except (RuntimeError, ValueError, KeyError, AssertionError, IndexError, TypeError) as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
        first = lines[0]
        if first.startswith("Error(s) in loading state_dict") and len(lines) > 1:  # name the first mismatch
            first = lines[1] + (f" (and {len(lines) - 2} more)" if len(lines) > 2 else "")
        if weights is not None:
            raise UniTuneError(f"model.weights: {weights} does not fit backbone {name!r}: {first}") from None
        if kwargs.get("pretrained"):
            raise UniTuneError(
                f"backbone {name!r}: could not load pretrained weights ({first}); "
                f"offline, give a local file with model.weights"
            ) from None
        raise UniTuneError(f"backbone {name!r}: timm could not build it with {kwargs}: {first}") from None
    if "img_size" in kwargs or "patch_size" in kwargs:
        # Only sizes the config chose: an architecture's own default is what its weights were
        # trained at (vit_so400m_patch14_siglip_384 tiles 384 px with 14 px patches, dropping 6).
        check_input_size(model, name)
    return check_vit(model, f"backbone {name!r}")


def check_input_size(model: torch.nn.Module, name: str) -> None:
    """Refuse an input size the patch embedding cannot tile.

    timm builds a ViT with ``img_size=30, patch_size=8`` without complaint and then silently
    drops the last 6 pixel rows and columns of every image (its strided conv floors); a size
    below the patch size builds too and fails only at the first forward pass.
    """
    embed = getattr(model, "patch_embed", None)
    img_size, patch = getattr(embed, "img_size", None), getattr(embed, "patch_size", None)
    if img_size is None or patch is None or getattr(embed, "dynamic_img_pad", False):
        return
    for size, step in zip(img_size, patch):
        if size < step or size % step:
            fits = max(step, size // step * step)
            raise UniTuneError(
                f"model.kwargs.img_size: {tuple(img_size) if img_size[0] != img_size[1] else size} does not fit "
                f"backbone {name!r}: the input size must be a multiple of its patch size {step} (e.g. {fits} "
                f"or {fits + step})"
            )
