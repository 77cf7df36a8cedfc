"""DoRA: weight-decomposed LoRA (Liu et al. 2024) on a frozen ``nn.Linear``.

The weight is split into a magnitude and a direction, and LoRA updates the direction only::

    W' = m ⊙ (W + s·B A) / ‖W + s·B A‖_row

with the norm taken per output unit over the input dimension, ``m`` (one value per output unit)
starting at ``‖W‖_row`` and ``B`` at zero, so a fresh layer *is* the base linear (bit for bit: the
scale ``m / ‖W‖`` is exactly 1). The bias is untouched. Rank r uses the first r rows of ``A`` and
columns of ``B`` (weight entanglement, as :class:`~unitune.supernet.methods.lora.LoRALinear`, of
which :class:`DoRALinear` is a subclass); ``m`` is used whole at any rank > 0, and rank 0 is the
base linear. Parameters: ``r·(in + out) + out``. On other backbone weights of the same shapes,
``m`` must be recomputed (:func:`recompute_dora_magnitude`).

It folds exactly: ``W ← W'`` (:meth:`DoRALinear.merged_weight`), bias unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Method, Option, finite_number, subset_of
from .lora import LORA_PATHS, LORA_TARGETS, LoRALinear, wrap_linears


def _row_norm(weight: torch.Tensor) -> torch.Tensor:
    """‖W‖ per output unit (row), over the input dimension: DoRA's column norm of ``W`` as ``in × out``."""
    return torch.linalg.vector_norm(weight, dim=1)


class DoRALinear(LoRALinear):
    """LoRA plus a learned magnitude, as HF PEFT makes DoRA a LoRA variant: the low-rank factors,
    their initialisation, the fixed ``scale`` (not ``alpha / r``, so a rank-r slice means the same
    update in every subnet that shares it) and :meth:`delta_weight` are LoRALinear's; DoRA adds
    ``magnitude`` and its own forward pass and fold.

    Being a subclass is safe for the merge: it dispatches on the method that injected a layer
    (``PeftViT.layer_sites``), never on the layer's type, so a DoRA layer is never folded as
    ``W + s·B A`` (which would drop the magnitude).

    The norm is detached from the gradient graph, as the DoRA paper (§4.3) suggests and HF PEFT
    does: ``‖W + s·B A‖`` still follows the update in the forward pass but is treated as a
    constant in the backward pass. The forward numbers are the same either way; what it saves is
    backpropagating through the norm of a dense ``out × in`` matrix per layer and step (for the
    fused qkv of ViT-B, 1.8M entries), which the paper reports costs little accuracy.
    """

    def __init__(self, base: nn.Linear, max_rank: int, scale: float = 1.0, device=None, dtype=None):
        super().__init__(base, max_rank, scale, device=device, dtype=dtype)
        dd = dict(device=device or base.weight.device, dtype=dtype or base.weight.dtype)
        # The very expression the forward pass divides by at B = 0, so m / ‖W‖ is exactly 1.
        self.magnitude = nn.Parameter(_row_norm(base.weight.detach().to(**dd)))

    def directed_weight(self) -> torch.Tensor:
        """``W + s·B[:, :r] A[:r]`` at the active rank r > 0 (dense ``out × in``)."""
        return self.base.weight + self.delta_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return self.base(x)
        weight = self.directed_weight()
        col_scale = self.magnitude / _row_norm(weight).detach()
        return F.linear(x, weight * col_scale.unsqueeze(1), self.base.bias)

    @torch.no_grad()
    def recompute_magnitude(self) -> None:
        """Set ``m = ‖W + s·B A‖_row`` for the linear this layer now wraps, at the active rank
        (``‖W‖`` at rank 0): what DoRA's initialisation computes from these factors.

        The magnitude is computed from the backbone weight, so PEFT weights trained on one
        backbone and loaded onto another (other weights, same shapes) carry a magnitude that
        belongs to the first: call this after such a load. The layer then computes
        ``W + s·B A`` on the new weight (the learned change of magnitude is dropped; the
        direction update is kept)."""
        weight = self.directed_weight() if self.size else self.base.weight
        self.magnitude.copy_(_row_norm(weight.detach()).to(self.magnitude.dtype))

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """The folded weight ``m ⊙ W' / ‖W'‖`` in float64 (the base weight at rank 0)."""
        if self.size == 0:
            return self.base.weight.double()
        r = self.size
        weight = self.base.weight.double() + self.scale * self.lora_B[:, :r].double() @ self.lora_A[:r].double()
        return weight * (self.magnitude.double() / _row_norm(weight)).unsqueeze(1)


def recompute_dora_magnitude(model: nn.Module) -> int:
    """:meth:`DoRALinear.recompute_magnitude` on every DoRA layer of ``model`` (a PeftViT or any
    module holding them); returns how many layers were recomputed. Call it after putting PEFT
    weights trained on one backbone onto other backbone weights."""
    layers = [m for m in model.modules() if isinstance(m, DoRALinear)]
    for layer in layers:
        layer.recompute_magnitude()
    return len(layers)


@torch.no_grad()
def fold_dora(linear: nn.Linear, layer: DoRALinear) -> None:
    """``W ← m ⊙ (W + s·B A) / ‖W + s·B A‖_row`` at the layer's active rank; the bias stays."""
    linear.weight.copy_(layer.merged_weight().to(linear.weight.dtype))


class DoRA(Method):
    name = "dora"
    family = "low_rank"
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
