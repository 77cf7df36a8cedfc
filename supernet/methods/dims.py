"""What parameter counting needs to know about a timm ViT: its width, each block's linears, SSF
points and ops, and the head. The methods count from these (``Method.count``), so they sit with
the methods, below the model and the counts (:mod:`unitune.supernet.params`) that use them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .layers import get_path, out_dim, unwrap
from .lora import LORA_PATHS
from .ssf import SSF_POINTS
from .vit import REQUIRED, check_vit, classifier_heads

BLOCK_OPS = tuple(p for p in REQUIRED if p not in ("attn", "mlp"))  # the block's norms and linears


@dataclass(frozen=True)
class BlockDims:
    dim: int
    lora: dict[str, tuple[int, int]]  # target -> (in_features, out_features)
    ssf: dict[str, int]  # SSF point -> output width
    # Every op of timm's standard block (norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2) ->
    # its own backbone parameters' shapes ({"weight": (192, 64), "bias": (192,)}; no bias key
    # when it has none): what a method that counts from the ops themselves reads (e.g. biases).
    ops: dict[str, dict[str, tuple[int, ...]]] = field(default_factory=dict)

    @property
    def ssf_width(self) -> int:
        return sum(self.ssf.values())


@dataclass(frozen=True)
class BackboneDims:
    """What parameter counting needs to know about a timm ViT."""

    dim: int
    blocks: tuple[BlockDims, ...]
    head_params: int
    num_classes: int

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @classmethod
    def from_model(cls, model: nn.Module) -> "BackboneDims":
        vit = check_vit(getattr(model, "vit", model))
        dim = vit.embed_dim
        blocks = []
        for block in vit.blocks:
            block = unwrap(block)
            lora = {}
            for target, path in LORA_PATHS.items():
                linear = unwrap(get_path(block, path))
                lora[target] = (linear.in_features, linear.out_features)
            ssf = {path: out_dim(unwrap(get_path(block, path)), dim) for path in SSF_POINTS}
            ops = {path: {n: tuple(p.shape) for n, p in unwrap(get_path(block, path)).named_parameters(recurse=False)}
                   for path in BLOCK_OPS}
            blocks.append(BlockDims(dim, lora, ssf, ops))
        head_params = sum(p.numel() for head in classifier_heads(vit).values() for p in head.parameters())
        return cls(dim, tuple(blocks), head_params, vit.num_classes)
