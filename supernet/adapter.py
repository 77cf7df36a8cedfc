"""Adapter: a bottleneck ``up(act(down(x)))`` on the MLP branch of a block, ``up`` starting at zero."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .layers import PeftLayer


class MlpAdapter(PeftLayer):
    """Wraps a block's MLP with an adapter of width up to ``max_width``.

    ``sequential`` (NOAH): ``h = mlp(x); h + s·adapter(h)``. ``parallel`` (AdaptFormer):
    ``mlp(x) + s·adapter(x)``. Both stay inside the MLP branch, so the block's LayerScale and
    drop-path apply to the adapter as they do to the MLP. Width k uses the first k hidden units.
    Parameters: ``2·d·k + k + d`` (both biases included; the up bias is part of any non-empty adapter).
    """

    _size_dims = {"down_weight": 0, "down_bias": 0, "up_weight": 1}

    def __init__(self, mlp: nn.Module, dim: int, max_width: int, style: str = "sequential", scale: float = 1.0,
                 device=None, dtype=None):
        super().__init__(max_width)
        self.mlp = mlp
        self.style = style
        self.scale = scale
        dd = dict(device=device, dtype=dtype)
        self.down_weight = nn.Parameter(torch.empty(max_width, dim, **dd))
        self.down_bias = nn.Parameter(torch.zeros(max_width, **dd))
        self.up_weight = nn.Parameter(torch.zeros(dim, max_width, **dd))
        self.up_bias = nn.Parameter(torch.zeros(dim, **dd))
        nn.init.kaiming_uniform_(self.down_weight, a=math.sqrt(5))

    def adapter(self, x: torch.Tensor) -> torch.Tensor:
        k = self.size
        h = F.gelu(F.linear(x, self.down_weight[:k], self.down_bias[:k]))
        return F.linear(h, self.up_weight[:, :k], self.up_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(x)
        if self.size == 0:
            return y
        return y + self.scale * self.adapter(y if self.style == "sequential" else x)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, style={self.style}"
