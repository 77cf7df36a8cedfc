"""DoRA: weight-decomposed LoRA (Liu et al. 2024) on a frozen ``nn.Linear``.

The weight is split into a magnitude and a direction, and LoRA updates the direction only::

    W' = m ⊙ (W + s·B A) / ‖W + s·B A‖_row

with the norm taken per output unit over the input dimension, ``m`` (one value per output unit)
starting at ``‖W‖_row`` and ``B`` at zero, so a fresh layer *is* the base linear (bit for bit: the
scale ``m / ‖W‖`` is exactly 1). The bias is untouched. Rank r uses the first r rows of ``A`` and
columns of ``B`` (weight entanglement, as :class:`~unitune.supernet.lora.LoRALinear`); ``m`` is
used whole at any rank > 0, and rank 0 is the base linear. Parameters: ``r·(in + out) + out``.

It folds exactly: ``W ← W'`` (:meth:`DoRALinear.merged_weight`), bias unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import PeftLayer
from .base import Method, Option, finite_number, subset_of
from .lora import LORA_PATHS, LORA_TARGETS, low_rank_factors, wrap_linears


def _row_norm(weight: torch.Tensor) -> torch.Tensor:
    """‖W‖ per output unit (row), over the input dimension: DoRA's column norm of ``W`` as ``in × out``."""
    return torch.linalg.vector_norm(weight, dim=1)


class DoRALinear(PeftLayer):
    """Wraps an ``nn.Linear``; ``scale`` is fixed (not ``alpha / r``), as LoRALinear's, so a rank-r
    slice means the same update in every subnet that shares it.

    Not a subclass of LoRALinear on purpose: the merge dispatches on the layer type, and folding a
    DoRA layer as ``W + s·B A`` would silently drop the magnitude.

    The norm is detached from the gradient graph, as the DoRA paper (§4.3) suggests and HF PEFT
    does: ``‖W + s·B A‖`` still follows the update in the forward pass but is treated as a
    constant in the backward pass. The forward numbers are the same either way; what it saves is
    backpropagating through the norm of a dense ``out × in`` matrix per layer and step (for the
    fused qkv of ViT-B, 1.8M entries), which the paper reports costs little accuracy.
    """

    _size_dims = {"lora_A": 0, "lora_B": 1}

    def __init__(self, base: nn.Linear, max_rank: int, scale: float = 1.0, device=None, dtype=None):
        super().__init__(max_rank)
        self.base = base
        self.scale = scale
        dd = dict(device=device or base.weight.device, dtype=dtype or base.weight.dtype)
        self.lora_A, self.lora_B = low_rank_factors(base, max_rank, dd)
        # The very expression the forward pass divides by at B = 0, so m / ‖W‖ is exactly 1.
        self.magnitude = nn.Parameter(_row_norm(base.weight.detach().to(**dd)))

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def directed_weight(self) -> torch.Tensor:
        """``W + s·B[:, :r] A[:r]`` at the active rank r > 0 (dense ``out × in``)."""
        r = self.size
        return self.base.weight + self.scale * self.lora_B[:, :r] @ self.lora_A[:r]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return self.base(x)
        weight = self.directed_weight()
        col_scale = self.magnitude / _row_norm(weight).detach()
        return F.linear(x, weight * col_scale.unsqueeze(1), self.base.bias)

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """The folded weight ``m ⊙ W' / ‖W'‖`` in float64 (the base weight at rank 0)."""
        if self.size == 0:
            return self.base.weight.double()
        r = self.size
        weight = self.base.weight.double() + self.scale * self.lora_B[:, :r].double() @ self.lora_A[:r].double()
        return weight * (self.magnitude.double() / _row_norm(weight)).unsqueeze(1)


@torch.no_grad()
def fold_dora(linear: nn.Linear, layer: DoRALinear) -> None:
    """``W ← m ⊙ (W + s·B A) / ‖W + s·B A‖_row`` at the layer's active rank; the bias stays."""
    linear.weight.copy_(layer.merged_weight().to(linear.weight.dtype))


class DoRA(Method):
    name = "dora"
    label = "DoRA"
    # Options mirror LoRA's: which block linears, and the fixed scale s.
    options = (
        Option("dora_targets", ("qkv",), subset_of(*LORA_TARGETS), dump=list),
        Option("dora_scale", 1.0, finite_number),
    )
    foldable = True
    # Innermost, below LoRA: DoRA needs the plain linear's weight, and LoRA on the same linear
    # then adds s·B A to DoRA's output, which folds as W ← W'_DoRA + s·B A (DoRA folds first).
    inject_rank = 5
    fold_rank = 5

    def params(self, size, block, dims, space):
        return sum(size * (block.lora[t][0] + block.lora[t][1]) + block.lora[t][1] for t in space.dora_targets)

    def inject(self, vit, space, block, size, dd):
        return wrap_linears(vit, block, space.dora_targets, lambda linear: DoRALinear(linear, size, space.dora_scale, **dd))

    def fold(self, vit, block, suffix, layer):
        fold_dora(vit.get_submodule(f"blocks.{block}.{LORA_PATHS[suffix]}"), layer)
        return []
