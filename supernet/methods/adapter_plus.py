"""Adapter+ (Steitz & Roth, "Adapters Strike Back", CVPR 2024): a bottleneck adapter after the
block's FFN with a learned channel-wise scale.

What unitune takes from the paper (and its code, visinf/adapter_plus, config ``adapter_plus``):

- **Placement "Post-Adapter"**: the adapter reads the block's output *after* the FFN's residual
  add and adds to it: ``z = block(x); z + γ ⊙ up(GELU(down(z)))``. It sits outside the block's
  LayerScale and drop-path. (unitune's ``sequential`` adapter is the paper's "intermediate"
  position, inside the MLP branch, which the paper found weaker.) To see the residual sum the
  layer wraps the whole block.
- **Channel-wise scaling**: ``γ`` is a learned vector of d values starting at 1, in place of a
  fixed scalar ``s``.
- **Inner structure**: no LayerNorm inside the adapter, biases on both projections, GELU.
- **Initialisation** "Houlsby": both projection weights truncated-normal with std 0.01, cut at
  ±2 std; biases zero. So, unlike unitune's other adapters (``up`` at zero), a fresh Adapter+
  layer changes the output slightly; size 0 still removes it. The paper's ablation prefers this
  to a zero ``up`` ("LoRA" init).

Left out: the paper's drop-path of 0.1 on the adapter branch (regularisation belongs to the
training recipe, and unitune's forward pass stays deterministic in eval and train alike).

Weight entanglement as :class:`MlpAdapter`: width k uses the first k hidden units; ``up_bias``
and ``γ`` are used whole by any width > 0. Parameters: ``2·d·k + k + d + d``.

Not mergeable: the GELU between the projections makes the adapter non-linear in its input, so
it stays a module in the exported model, as the plain adapter does.
"""

from __future__ import annotations

import torch
from torch import nn

from .adapter import MlpAdapter
from .base import Method

HOULSBY_STD = 0.01


class AdapterPlus(MlpAdapter):
    """Wraps a transformer block with an Adapter+ of width up to ``max_width``."""

    def __init__(self, block: nn.Module, dim: int, max_width: int, device=None, dtype=None):
        super().__init__(block, dim, max_width, style="post", scale=1.0, device=device, dtype=dtype)
        # MlpAdapter calls what it wraps ``mlp``; here it is a block. Re-registered as ``block``
        # (still the only child module, which is what ``unwrap`` and the merge's stripping take).
        del self.mlp
        self.block = block
        self.adapter_scale = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))
        with torch.no_grad():
            for w in (self.down_weight, self.up_weight):
                nn.init.trunc_normal_(w, std=HOULSBY_STD, a=-2 * HOULSBY_STD, b=2 * HOULSBY_STD)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        z = self.block(x, *args, **kwargs)
        if self.size == 0:
            return z
        # γ in the activation's dtype, as SSF's scale: under bf16 autocast it would promote z.
        return z + self.adapter(z) * self.adapter_scale.to(z.dtype)


class AdapterPlusMethod(Method):
    name = "adapter_plus"
    family = "adapter"
    label = "Adapter+"
    # Wraps the whole block: outside LoRA / SSF / BitFit / the MLP adapter (which wrap modules
    # inside it), inside VPT's prompt insertion (per token, either order gives the same outputs).
    inject_rank = 35

    def params(self, size, block, dims, space):
        d = block.dim
        return 2 * d * size + size + d + d  # down, down bias, up, up bias, channel scale γ

    def inject(self, vit, space, block, size, dd):
        layer = AdapterPlus(vit.blocks[block], vit.embed_dim, size, **dd)
        vit.blocks[block] = layer
        return [("", layer)]
