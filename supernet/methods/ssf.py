"""SSF: scale and shift the output of an op, ``y = γ ⊙ op(x) + β``, with γ = 1 and β = 0 at the start.

Per block, SSF follows norm1, qkv, proj, norm2, fc1 and fc2: ``2·(d + 3d + d + d + 4d + d) = 22·d``
parameters on a standard ViT. Being affine on the output channels, it folds exactly into the
linear, LayerNorm or conv before it.
"""

from __future__ import annotations

import torch
from torch import nn

from unitune.errors import UniTuneError

from .layers import PeftLayer, get_path, out_dim, set_path, unwrap
from .base import Method, foldable_op
from .fold import fold_scale_shift

# Where SSF goes in each block: after these modules (paths relative to the block).
SSF_POINTS = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")


def wrap_points(vit, block: int, make) -> list[tuple[str, PeftLayer]]:
    """Wrap each of block ``block``'s SSF points in ``make(module, output width)``: the sites of
    SSF and of BitFit, which trains a bias at the same six outputs."""
    b, out = vit.blocks[block], []
    for path in SSF_POINTS:
        module = get_path(b, path)
        layer = make(module, out_dim(unwrap(module), vit.embed_dim))
        set_path(b, path, layer)
        out.append((path, layer))
    return out


def unfoldable_point(vit, sizes) -> tuple[int, str, nn.Module] | None:
    """The first point of a block where ``sizes`` is on that no merge can fold into (an RmsNorm:
    no bias to take a shift): ``(block, path, op)``, or None."""
    for i, on in enumerate(sizes):
        if on:
            block = unwrap(vit.blocks[i])
            for path in SSF_POINTS:
                op = unwrap(get_path(block, path))
                if not foldable_op(op):
                    return i, path, op
    return None
FOLD_HINT = "SSF folds only into Linear, Conv2d and LayerNorm"


class SSF(PeftLayer):
    """Wraps a module whose output's last dimension is ``dim``; ``size`` is 0 (off) or 1 (on)."""

    def __init__(self, module: nn.Module, dim: int, device=None, dtype=None):
        super().__init__(1)
        self.module = module
        self.ssf_scale = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))
        self.ssf_shift = nn.Parameter(torch.zeros(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        y = self.module(x, *args, **kwargs)
        if self.size == 0:
            return y
        # In the activation's dtype: under bf16 autocast the fp32 scale and shift would otherwise
        # promote y (fc1's 3072-wide output on ViT-B) to fp32 for the rest of the block. In fp32
        # the casts are no-ops and the result is bit-for-bit the plain expression.
        return y * self.ssf_scale.to(y.dtype) + self.ssf_shift.to(y.dtype)


class BlockSSF(Method):
    name = "ssf"
    label = "SSF"
    size_word = "on"
    on_off = True
    default_choices = (0, 1)
    always_written = True
    foldable = True
    inject_rank = 20  # wraps the linears (and their LoRA) before the adapter wraps the MLP
    fold_rank = 20  # after LoRA: it scales the LoRA-updated weight

    def params(self, size, block, dims, space):
        return 2 * block.ssf_width

    def inject(self, vit, space, block, size, dd):
        return wrap_points(vit, block, lambda module, width: SSF(module, width, **dd))

    def fold(self, vit, block, suffix, layer):
        path = f"blocks.{block}.{suffix}"
        return [f"{path}.{p}" for p in fold_scale_shift(vit.get_submodule(path), layer.ssf_scale, layer.ssf_shift)]

    def check_backbone(self, vit, name, sizes):
        found = unfoldable_point(vit, sizes)
        if found:
            i, path, op = found
            raise UniTuneError(f"{name}: SSF after block {i}'s {path} (a {type(op).__name__}) could not be "
                               f"merged into the backbone ({FOLD_HINT}); SSF must stay off on this backbone "
                               f"(space.ssf: [0])")
