"""VPT-deep: learned prompt tokens that one block sees and that are dropped after it.

p tokens hold ``p·d`` parameters. Not mergeable: prompts are extra tokens, not a weight update.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .layers import PeftLayer
from .base import Method


class PromptedBlock(PeftLayer):
    """Wraps a transformer block; p prompts are inserted after the prefix tokens (class and
    register tokens) and removed again after the block, so prefix tokens keep their places and
    pooling and the head never see a prompt."""

    _size_dims = {"prompts": 0}

    def __init__(self, block: nn.Module, dim: int, max_tokens: int, num_prefix_tokens: int, patch_numel: int = 0,
                 device=None, dtype=None):
        super().__init__(max_tokens)
        self.block = block
        self.num_prefix_tokens = num_prefix_tokens
        self.prompts = nn.Parameter(torch.empty(max_tokens, dim, device=device, dtype=dtype))
        # VPT's initialisation: uniform with the Xavier bound of a patch-to-token projection.
        bound = math.sqrt(6.0 / float(patch_numel + dim)) if patch_numel else 0.02
        nn.init.uniform_(self.prompts, -bound, bound)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        p = self.size
        if p == 0:
            return self.block(x, *args, **kwargs)
        if args or kwargs.get("attn_mask") is not None:
            raise NotImplementedError("VPT prompts with an attention mask are not supported")
        n = self.num_prefix_tokens
        prompts = self.prompts[:p].to(x.dtype).expand(x.shape[0], -1, -1)
        x = torch.cat([x[:, :n], prompts, x[:, n:]], dim=1)
        x = self.block(x, **kwargs)
        return torch.cat([x[:, :n], x[:, n + p:]], dim=1)


class VPT(Method):
    name = "vpt"
    family = "prompt"
    label = "VPT"
    size_word = "tokens"
    default_choices = (0, 1, 5, 10)
    always_written = True
    inject_rank = 40  # wraps the whole block, outermost
    # Prompts are tokens, not a weight matrix: no weight decay (VPT trains them so).
    no_weight_decay = ("prompts",)

    def params(self, size, block, dims, space):
        return size * block.dim

    def inject(self, vit, space, block, size, dd):
        patch = vit.patch_embed.proj
        patch_numel = patch.weight[0].numel() if isinstance(patch, nn.Conv2d) else 0
        layer = PromptedBlock(vit.blocks[block], vit.embed_dim, size, vit.num_prefix_tokens, patch_numel, **dd)
        vit.blocks[block] = layer
        return [("", layer)]
