"""SSF: scale and shift the output of an op, ``y = γ ⊙ op(x) + β``, with γ = 1 and β = 0 at the start.

Per block, SSF follows norm1, qkv, proj, norm2, fc1 and fc2: ``2·(d + 3d + d + d + 4d + d) = 22·d``
parameters on a standard ViT. Being affine on the output channels, it folds exactly into the
linear, LayerNorm or conv before it. The sites, the on/off layer and the backbone check are the
point methods' (:mod:`.point`), shared with BitFit.
"""

from __future__ import annotations

import torch
from torch import nn

from .fold import fold_scale_shift
from .point import SSF_POINTS, PointLayer, PointMethod, unfoldable_point, wrap_points  # noqa: F401 (BitFit's old path)

FOLD_HINT = "SSF folds only into Linear, Conv2d and LayerNorm"


class SSF(PointLayer):
    """Wraps a module whose output's last dimension is ``dim``; ``size`` is 0 (off) or 1 (on)."""

    def __init__(self, module: nn.Module, dim: int, device=None, dtype=None):
        super().__init__(module)
        self.ssf_scale = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))
        self.ssf_shift = nn.Parameter(torch.zeros(dim, device=device, dtype=dtype))

    def update(self, y: torch.Tensor) -> torch.Tensor:
        # In the activation's dtype: under bf16 autocast the fp32 scale and shift would otherwise
        # promote y (fc1's 3072-wide output on ViT-B) to fp32 for the rest of the block. In fp32
        # the casts are no-ops and the result is bit-for-bit the plain expression.
        return y * self.ssf_scale.to(y.dtype) + self.ssf_shift.to(y.dtype)


class BlockSSF(PointMethod):
    name = "ssf"
    family = "scale_shift"
    label = "SSF"
    size_word = "on"
    default_choices = (0, 1)
    always_written = True
    layer_class = SSF
    fold_hint = FOLD_HINT
    inject_rank = 20  # wraps the linears (and their LoRA) before the adapter wraps the MLP
    fold_rank = 20  # after LoRA: it scales the LoRA-updated weight

    def params(self, size, block, dims, space):
        return 2 * block.ssf_width

    def fold(self, vit, block, suffix, layer):
        path = f"blocks.{block}.{suffix}"
        return [f"{path}.{p}" for p in fold_scale_shift(vit.get_submodule(path), layer.ssf_scale, layer.ssf_shift)]
