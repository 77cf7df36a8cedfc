"""Global SSF: SSF after the patch embedding and after the final norm, one on/off for the model.

``2·(d + d) = 4·d`` parameters. Folds into the patch-embed norm (or its conv) and into the final
norm — or, when the model has neither ``norm`` nor ``fc_norm``, into the head's input.
"""

from __future__ import annotations

from torch import nn

from unitune.errors import UniTuneError

from .layers import unwrap
from .base import Method, foldable_op
from .fold import fold_into_input, fold_scale_shift
from .ssf import FOLD_HINT, SSF


def _final_norm(vit: nn.Module) -> str:
    return "norm" if not isinstance(unwrap(vit.norm), nn.Identity) else "fc_norm"


class GlobalSSF(Method):
    name = "ssf_global"
    family = "scale_shift"
    label = "SSF"
    title = "global SSF"
    site = "model"
    on_off = True
    default_choices = (0, 1)
    report_as = "ssf"  # counted with the per-block SSF in per-method totals
    always_written = True
    foldable = True
    fold_rank = 20

    def params(self, size, block, dims, space):
        return 4 * dims.dim  # scale and shift after patch-embed (d) and after the final norm (d)

    def inject(self, vit, space, block, size, dd):
        # After patch-embed: wrap its (usually Identity) output norm, so the PatchEmbed module
        # and the attributes timm reads from it stay in place.
        embed_norm = SSF(vit.patch_embed.norm, vit.embed_dim, **dd)
        vit.patch_embed.norm = embed_norm
        final = _final_norm(vit)
        final_norm = SSF(getattr(vit, final), vit.embed_dim, **dd)
        setattr(vit, final, final_norm)
        return [("patch_embed", embed_norm), (final, final_norm)]

    def fold(self, vit, block, suffix, layer):
        scale, shift = layer.ssf_scale, layer.ssf_shift
        if suffix == "patch_embed":
            path = "patch_embed.norm" if not isinstance(vit.patch_embed.norm, nn.Identity) else "patch_embed.proj"
        elif isinstance(vit.get_submodule(suffix), nn.Identity):
            # Neither norm nor fc_norm exists: the op after the pooled features is the head, and
            # head(γ⊙x + β) = (W diag γ) x + (W β + b) folds there instead (exact in eval mode).
            return [f"head.{p}" for p in fold_into_input(vit.head, scale, shift)]
        else:
            path = suffix
        return [f"{path}.{p}" for p in fold_scale_shift(vit.get_submodule(path), scale, shift)]

    def check_backbone(self, vit, name, sizes):
        if not sizes:
            return
        embed_norm = unwrap(vit.patch_embed.norm)
        first = vit.patch_embed.proj if isinstance(embed_norm, nn.Identity) else embed_norm
        final = unwrap(vit.norm) if not isinstance(unwrap(vit.norm), nn.Identity) else unwrap(vit.fc_norm)
        last = vit.head if isinstance(final, nn.Identity) and not hasattr(vit, "head_dist") else final
        for where, op in (("patch_embed", first), ("final norm", last)):
            if not foldable_op(op):
                raise UniTuneError(f"{name}: the global SSF at the {where} (a {type(op).__name__}) could not be merged "
                                   f"into the backbone ({FOLD_HINT}); the global SSF must stay off on this backbone "
                                   f"(space.ssf_global: [0])")
