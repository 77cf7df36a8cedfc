"""Adapter: a bottleneck ``up(act(down(x)))`` on the MLP branch of a block, ``up`` starting at zero.

Width k holds ``2·d·k + k + d`` parameters (down and up weights and biases). Not mergeable: the
nonlinearity keeps it a module in the exported model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .layers import PeftLayer
from .base import Method, Option, finite_number, one_of

ADAPTER_STYLES = ("sequential", "parallel")


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
        # A contiguous input: on a strided one (a block's output in a ViT without a class token)
        # torch's linear picks its kernel by whether the weight requires grad, so a frozen copy
        # (from_pretrained's default) would differ from the trained model in the last bits.
        h = F.gelu(F.linear(x.contiguous(), self.down_weight[:k], self.down_bias[:k]))
        return F.linear(h, self.up_weight[:, :k], self.up_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(x)
        if self.size == 0:
            return y
        return y + self.scale * self.adapter(y if self.style == "sequential" else x)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, style={self.style}"


class Adapter(Method):
    name = "adapter"
    family = "adapter"
    label = "Adapter"
    size_word = "dim"
    default_choices = (0, 1, 5, 10)
    options = (
        Option("adapter_style", "sequential", one_of(*ADAPTER_STYLES)),  # after the MLP or parallel to it
        Option("adapter_scale", 1.0, finite_number),
    )
    always_written = True
    inject_rank = 30  # wraps the MLP, outside any LoRA / SSF on its linears

    def params(self, size, block, dims, space):
        d = block.dim
        return 2 * d * size + size + d

    def inject(self, vit, space, block, size, dd):
        b = vit.blocks[block]
        layer = MlpAdapter(b.mlp, vit.embed_dim, size, space.adapter_style, space.adapter_scale, **dd)
        b.mlp = layer
        return [("", layer)]
