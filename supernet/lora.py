"""LoRA: a frozen linear plus a low-rank update, ``base(x) + s·B(A x)`` with ``B`` starting at zero."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .layers import PeftLayer


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
        self.lora_A = nn.Parameter(torch.empty(max_rank, base.in_features, **dd))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, max_rank, **dd))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

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
