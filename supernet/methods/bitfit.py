"""BitFit: train the biases of a block's linears and norms, ``y = op(x) + δ`` with δ starting at zero.

BitFit (Ben Zaken et al. 2022) fine-tunes the existing biases in place. In unitune's frozen,
weight-sharing backbone the bias itself stays frozen and a learned delta is added to the op's
output, which is the same function (``b' = b + δ``) and lets a subnet switch BitFit off per block.
It goes after the six ops SSF uses (``norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2``), so a
block costs the sum of their output widths: ``d + 3d + d + d + 4d + d = 11·d`` (8,448 on ViT-B).
Where an op has no bias (``qkv_bias=False``, a LayerNorm without affine parameters) BitFit still
trains one and the merge creates it: that is the one place it departs from the original, which
could only train the biases a model already has.

Being a shift of the output channels, it folds exactly into the op's bias (:func:`fold_bias`). It is
a point method, as SSF (:mod:`.point`: the same sites, on/off layer and backbone check).
"""

from __future__ import annotations

import torch
from torch import nn

from unitune.errors import UniTuneError

from .fold import new_param
from .point import PointLayer, PointMethod


class BitFit(PointLayer):
    """Wraps a module whose output's last dimension is ``dim``; ``size`` is 0 (off) or 1 (on)."""

    def __init__(self, module: nn.Module, dim: int, device=None, dtype=None):
        super().__init__(module)
        # Not called ``bias``: the wrapper stands where timm's op stood, and code that reads
        # ``op.bias`` must not mistake the delta for the op's own bias.
        self.bias_delta = nn.Parameter(torch.zeros(dim, device=device, dtype=dtype))

    def update(self, y: torch.Tensor) -> torch.Tensor:
        # In the activation's dtype (as SSF): under bf16 autocast an fp32 delta would promote y.
        return y + self.bias_delta.to(y.dtype)


@torch.no_grad()
def fold_bias(op: nn.Module, delta: torch.Tensor) -> list[str]:
    """``b ← b + δ`` (in float64, written back in the bias's dtype); return the created parameter names.

    A missing bias is created (zero) first, as SSF's merge does; the merge turns created block
    linear biases into timm ``create_model`` keywords (``qkv_bias=True``) so the result still
    loads strictly into a plain timm model.
    """
    created: list[str] = []
    if isinstance(op, (nn.Linear, nn.Conv2d)):
        like, shape = op.weight, (op.weight.shape[0],)
    elif isinstance(op, nn.LayerNorm) and len(op.normalized_shape) == 1:
        like, shape = next(iter(op.parameters()), delta), op.normalized_shape
    else:
        raise UniTuneError(f"merge: cannot fold BitFit into a {type(op).__name__}; "
                           "expected Linear, Conv2d or a LayerNorm over the last dimension")
    if op.bias is None:
        op.bias = new_param(like, shape, 0.0)
        created.append("bias")
        if isinstance(op, nn.LayerNorm):
            # F.layer_norm takes a bias without a weight; the flag only records that a
            # parameter now exists (what ``supernet.merge.add_params`` sets on load, too).
            op.elementwise_affine = True
    op.bias.copy_((op.bias.double() + delta.detach().double()).to(op.bias.dtype))
    return created


class BitFitMethod(PointMethod):
    name = "bitfit"
    family = "scale_shift"
    label = "BitFit"
    layer_class = BitFit
    fold_hint = "BitFit folds only into the bias of a Linear, Conv2d or LayerNorm"
    # Between LoRA (innermost) and SSF on the same op: SSF(BitFit(LoRA(op))) computes
    # γ ⊙ (W'x + b + δ) + β, so the folds go LoRA, then the shift, then the scale.
    inject_rank = 15
    fold_rank = 15

    def params(self, size, block, dims, space):
        return sum(block.ssf.values())  # the same six points as SSF, one value per output channel

    def fold(self, vit, block, suffix, layer):
        path = f"blocks.{block}.{suffix}"
        return [f"{path}.{p}" for p in fold_bias(vit.get_submodule(path), layer.bias_delta)]
