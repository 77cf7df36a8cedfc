"""LoRA: a frozen linear plus a low-rank update, ``base(x) + s·B(A x)`` with ``B`` starting at zero.

Rank r on a linear ``in → out`` holds ``r·(in + out)`` parameters; on the fused qkv that is
``4·d·r``. It folds exactly: ``W ← W + s·B[:, :r] A[:r]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .layers import PeftLayer, get_path, set_path
from .base import Method, Option, finite_number, subset_of
from .fold import fold_weight_delta

# The block linears LoRA can target (``space.lora_targets``), by their path in timm's Block.
LORA_PATHS = {"qkv": "attn.qkv", "proj": "attn.proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
LORA_TARGETS = tuple(LORA_PATHS)


def low_rank_factors(base: nn.Linear, max_rank: int, dd: dict) -> tuple[nn.Parameter, nn.Parameter]:
    """LoRA's (and DoRA's) factors for ``base``: ``A`` (rank × in, Kaiming-uniform, as nn.Linear)
    and ``B`` (out × rank, zero: a fresh layer is the base linear)."""
    a = nn.Parameter(torch.empty(max_rank, base.in_features, **dd))
    nn.init.kaiming_uniform_(a, a=math.sqrt(5))
    return a, nn.Parameter(torch.zeros(base.out_features, max_rank, **dd))


def wrap_linears(vit, block: int, targets, make) -> list[tuple[str, PeftLayer]]:
    """Wrap each target linear of block ``block`` (``qkv``, ``proj``, ``fc1``, ``fc2``) in
    ``make(linear)``: the sites of LoRA and DoRA."""
    out = []
    for target in targets:
        layer = make(get_path(vit.blocks[block], LORA_PATHS[target]))
        set_path(vit.blocks[block], LORA_PATHS[target], layer)
        out.append((target, layer))
    return out


class LoRALinear(PeftLayer):
    """Wraps an ``nn.Linear``; rank r uses the first r rows of ``lora_A`` and columns of ``lora_B``.

    The scale ``s`` is fixed rather than ``alpha / r`` so that a rank-r slice means the same update
    in every subnet that shares it.
    """

    _size_dims = {"lora_A": 0, "lora_B": 1}

    def __init__(self, base: nn.Linear, max_rank: int, scale: float = 1.0, device=None, dtype=None):
        super().__init__(max_rank)
        self.base = base
        self.scale = scale
        # The update is added to the frozen linear's output: same device and dtype by default.
        dd = dict(device=device or base.weight.device, dtype=dtype or base.weight.dtype)
        self.lora_A, self.lora_B = low_rank_factors(base, max_rank, dd)

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        r = self.size
        if r == 0:
            return y
        return y + self.scale * F.linear(F.linear(x, self.lora_A[:r]), self.lora_B[:, :r])

    def delta_weight(self) -> torch.Tensor:
        """The active update as a dense ``out × in`` matrix: ``s · B[:, :r] @ A[:r]``."""
        r = self.size
        return self.scale * self.lora_B[:, :r] @ self.lora_A[:r]


class LoRA(Method):
    name = "lora"
    family = "low_rank"
    label = "LoRA"
    size_word = "r"
    default_choices = (0, 1, 5, 10)
    options = (
        Option("lora_targets", ("qkv",), subset_of(*LORA_TARGETS), dump=list),
        Option("lora_scale", 1.0, finite_number),  # s in qkv(x) + s·B(Ax)
    )
    always_written = True
    foldable = True
    inject_rank = 10  # inside SSF and VeRA on the same linear (DoRA, 5, is innermost), so LoRA folds before SSF
    fold_rank = 10

    def params(self, size, block, dims, space):
        return sum(size * (block.lora[t][0] + block.lora[t][1]) for t in space.lora_targets)

    def inject(self, vit, space, block, size, dd):
        return wrap_linears(vit, block, space.lora_targets, lambda linear: LoRALinear(linear, size, space.lora_scale, **dd))

    def fold(self, vit, block, suffix, layer):
        fold_weight_delta(vit.get_submodule(f"blocks.{block}.{LORA_PATHS[suffix]}"), layer.delta_weight())
        return []
