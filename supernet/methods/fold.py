"""Folding primitives: write an affine update of an op's output into the op's own weights.

Every fold is computed in float64 and written back in the parameter's dtype. Where a shift needs
a bias the op does not have, one is created (and its name returned, so merge can record it).
"""

from __future__ import annotations

import torch
from torch import nn

from unitune.errors import UniTuneError


def new_param(like: torch.Tensor, shape: torch.Size | tuple[int, ...], value: float) -> nn.Parameter:
    return nn.Parameter(torch.full(shape, value, dtype=like.dtype, device=like.device), requires_grad=False)


def assign(param: torch.Tensor, value: torch.Tensor) -> None:
    param.copy_(value.to(param.dtype))


def fold_weight_delta(linear: nn.Linear, delta: torch.Tensor) -> None:
    """``W ← W + ΔW`` (LoRA's ``s·B A``)."""
    assign(linear.weight, linear.weight.double() + delta.double())


def fold_scale_shift(op: nn.Module, scale: torch.Tensor, shift: torch.Tensor) -> list[str]:
    """Fold ``y ← scale ⊙ y + shift`` (on the output channels) into ``op``; return created parameter names."""
    ssf_param = scale
    scale, shift = scale.detach().double(), shift.detach().double()
    created = []
    if isinstance(op, (nn.Linear, nn.Conv2d)):
        w = op.weight
        assign(w, w.double() * scale.view(-1, *([1] * (w.dim() - 1))))
        if op.bias is None:
            op.bias = new_param(w, (w.shape[0],), 0.0)
            created.append("bias")
        assign(op.bias, op.bias.double() * scale + shift)
    elif isinstance(op, nn.LayerNorm):
        if len(op.normalized_shape) != 1:
            raise UniTuneError(f"merge: cannot fold SSF into a LayerNorm over {tuple(op.normalized_shape)}")
        # A norm without parameters: the new ones take the SSF's device and dtype (the backbone's).
        like = next(iter(op.parameters()), ssf_param)
        if op.weight is None:
            op.weight = new_param(like, op.normalized_shape, 1.0)
            created.append("weight")
        if op.bias is None:
            op.bias = new_param(like, op.normalized_shape, 0.0)
            created.append("bias")
        op.elementwise_affine = True
        assign(op.weight, op.weight.double() * scale)
        assign(op.bias, op.bias.double() * scale + shift)
    else:
        raise UniTuneError(f"merge: cannot fold SSF into a {type(op).__name__}; expected Linear, Conv2d or LayerNorm")
    return created


def fold_into_input(head: nn.Module, scale: torch.Tensor, shift: torch.Tensor) -> list[str]:
    """Fold ``x ← scale ⊙ x + shift`` on a linear's *input*: ``head(γ⊙x + β) = (W diag γ) x + (W β + b)``."""
    if not isinstance(head, nn.Linear):
        raise UniTuneError("merge: the final global SSF has no norm to fold into and the head is not an nn.Linear")
    scale, shift = scale.detach().double(), shift.detach().double()
    created = []
    w = head.weight.double()
    if head.bias is None:
        head.bias = new_param(head.weight, (head.out_features,), 0.0)
        created.append("bias")
    assign(head.bias, head.bias.double() + w @ shift)
    assign(head.weight, w * scale)
    return created
