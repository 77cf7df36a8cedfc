"""SSF: scale and shift the output of an op, ``y = γ ⊙ op(x) + β``, with γ = 1 and β = 0 at the start.

Being affine on the output channels, it folds exactly into the linear, LayerNorm or conv before it.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import PeftLayer


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
