"""What a timm ViT must be for the PEFT layers: the check every backbone passes before training,
and the classifier head(s) training updates.

It sits with the methods (below the model package) because each method's own backbone check runs
from here and the backbone dims (:mod:`.dims`) read a checked ViT.
"""

from __future__ import annotations

from typing import Any

from timm.layers import HybridEmbed, PatchEmbed
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from unitune.errors import UniTuneError

from . import METHODS
from .layers import get_path as _get
from .layers import unwrap

REQUIRED = ("norm1", "norm2", "attn", "attn.qkv", "attn.proj", "mlp", "mlp.fc1", "mlp.fc2")


def check_vit(model: nn.Module, name: str | None = None, sizes: Any = None) -> VisionTransformer:
    """Decide a backbone's fate before any training: return it, or raise a one-line error.

    Supported: timm ``VisionTransformer`` s (and distilled DeiT, whose distillation token is one
    more prefix token and whose two heads are both trained) with a plain conv patch embedding
    and timm's standard block. Refused: hybrid CNN+ViT models (``HybridEmbed``), blocks of another
    layout (parallel blocks, SwiGLU MLPs, no fused qkv) and, when ``sizes`` turns SSF on, any SSF
    point that cannot be folded into the backbone at merge time (an RmsNorm or SimpleNorm has no
    bias to take SSF's shift). The README's backbone table lists the families and why.
    """
    if not isinstance(model, VisionTransformer):
        raise UniTuneError(f"{name or 'backbone'}: is not a timm VisionTransformer (got {type(model).__name__})")
    name = name or backbone_name(model)
    embed = model.patch_embed
    if not isinstance(embed, PatchEmbed):
        if isinstance(embed, HybridEmbed):
            what = ("a hybrid CNN+ViT with a HybridEmbed patch embedding is not supported (its CNN stem has its own "
                    "norms, BatchNorm statistics and channel count that the PEFT layers and the merge do not handle)")
        else:
            what = f"a ViT with a {type(embed).__name__} patch embedding is not supported"
        raise UniTuneError(f"{name}: {what}; use a ViT with timm's conv PatchEmbed (vit_*_patch*, deit*)")
    for i, block in enumerate(model.blocks):
        block = unwrap(block)
        for path in REQUIRED:
            if _get(block, path) is None:
                parent, _, part = path.rpartition(".")
                owner = unwrap(_get(block, parent)) if parent else block
                what = f"block {i} ({type(block).__name__})" if owner is block else \
                    f"block {i}'s {parent} ({type(owner).__name__})"
                raise UniTuneError(f"{name}: {what} has no '{part}'; unitune needs timm's standard ViT Block "
                                   f"(norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2)")
        if not isinstance(unwrap(_get(block, "attn.qkv")), nn.Linear):
            raise UniTuneError(f"{name}: block {i} has no fused nn.Linear 'attn.qkv'")
    if sizes is not None:
        check_methods(model, name, sizes)
    return model


def backbone_name(vit: nn.Module) -> str:
    arch = (getattr(vit, "pretrained_cfg", None) or {}).get("architecture")
    return f"backbone {arch!r}" if arch else "backbone"


def check_methods(vit: VisionTransformer, name: str, sizes: Any) -> None:
    """Refuse, before training rather than after it, what a method's merge could not fold
    (SSF after an op that has no bias to take its shift): each method's own backbone check."""
    for method in METHODS.values():
        method.check_backbone(vit, name, sizes.sizes(method.name))


def classifier_heads(vit: VisionTransformer) -> dict[str, nn.Module]:
    """The head(s) training updates, by attribute name: ``head``, and a distilled DeiT's
    ``head_dist`` (timm averages the two heads' logits, in training too unless
    ``set_distilled_training`` asks for both; without a teacher, both learn the labels)."""
    heads = {"head": vit.head}
    if isinstance(getattr(vit, "head_dist", None), nn.Module):
        heads["head_dist"] = vit.head_dist
    return heads
