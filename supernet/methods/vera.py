"""VeRA: vector-based random matrix adaptation (Kopiczko et al., ICLR 2024) on frozen ``nn.Linear`` s.

One pair of frozen random matrices ``A`` (r × in) and ``B`` (out × r) is shared by every adapted
linear of the same shape in the model; each linear trains two vectors only, ``d`` (length r) and
``b`` (length out)::

    y = base(x) + b ⊙ B (d ⊙ A x),   ΔW = diag(b) · B · diag(d) · A

``b`` starts at zero (so a fresh layer *is* the base linear) and ``d`` at 0.1, as in the paper.
Parameters per adapted linear ``in → out`` at rank r: ``r + out`` (on ViT-B's fused qkv,
``r + 3·768``). The targets are LoRA's (``vera_targets``: qkv, proj, fc1, fc2; default qkv).

Sharing. ``A`` and ``B`` are built once per model by the model-level hook
(:meth:`VeRA.build_shared`) from ``vera_seed`` (a space option, so every space, subnet export and
PEFT save records it and a reload rebuilds the same matrices) and held as buffers, once, in
``model.shared["vera"]``. Rank r uses the first r rows of ``A``, the first r columns of ``B``
and the first r entries of ``d`` (``b`` is used whole at any r > 0): the weight sharing of the
supernet is LoRA's prefix rule. Row k of ``A`` and column k of ``B`` are drawn from a stream
seeded by ``(vera_seed, in, out)`` in the order k = 0, 1, 2, ..., so a rank-r prefix is the same
matrix whatever the model's largest rank: the supernet, every materialised subnet and a reload
see identical matrices. The bounds are those of Kaiming-uniform for ``A`` (``1/√in``, as
nn.Linear) and, so that they do not depend on r, ``1/√out`` for ``B``.

It folds exactly: ``W ← W + diag(b) B[:, :r] diag(d[:r]) A[:r]``; the bias is untouched.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from unitune.errors import UniTuneError

from .layers import PeftLayer, get_path
from .base import Method, Option, subset_of
from .fold import fold_weight_delta
from .lora import LORA_PATHS, LORA_TARGETS, wrap_linears

D_INIT = 0.1  # d's starting value (the paper's); b starts at 0


def _seed(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2 ** 31:
        raise UniTuneError(f"{where}: expected an integer seed in [0, 2**31), got {value!r}")
    return value


def random_pair(seed: int, d_in: int, d_out: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """VeRA's frozen ``A`` (rank × d_in) and ``B`` (d_out × rank) for one shape, in float32 on the
    CPU: row k of A and column k of B are the k-th draws of one stream, so the first r rows and
    columns do not depend on ``rank``."""
    # modulo 2**64: the generator takes 64 bits (every seed below ~1.8e7 keeps its matrices)
    g = torch.Generator().manual_seed(((seed * 1_000_003 + d_in) * 1_000_033 + d_out) % 2 ** 64)
    a, b = torch.empty(rank, d_in), torch.empty(d_out, rank)
    bound_a, bound_b = 1 / math.sqrt(d_in), 1 / math.sqrt(d_out)
    for k in range(rank):
        a[k] = (torch.rand(d_in, generator=g) * 2 - 1) * bound_a
        b[:, k] = (torch.rand(d_out, generator=g) * 2 - 1) * bound_b
    return a, b


class VeRAShared(nn.Module):
    """The model's frozen random matrices, one pair per linear shape, as (non-persistent) buffers:
    ``A_<in>x<out>`` and ``B_<in>x<out>``. Not in any state dict: ``vera_seed`` rebuilds them."""

    def __init__(self, seed: int, ranks: dict[tuple[int, int], int], dd: dict):
        super().__init__()
        for (d_in, d_out), rank in sorted(ranks.items()):
            a, b = random_pair(seed, d_in, d_out, rank)
            self.register_buffer(f"A_{d_in}x{d_out}", a.to(**dd), persistent=False)
            self.register_buffer(f"B_{d_in}x{d_out}", b.to(**dd), persistent=False)

    def pair(self, d_in: int, d_out: int) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self, f"A_{d_in}x{d_out}"), getattr(self, f"B_{d_in}x{d_out}")


class VeRALinear(PeftLayer):
    """Wraps an ``nn.Linear`` (its first child, see :mod:`.base`); trains ``vera_d`` (rank) and
    ``vera_b`` (out). The shared matrices are read from the model's :class:`VeRAShared` at each
    call, which the layer refers to without owning it (not a submodule, not in its state)."""

    _size_dims = {"vera_d": 0}  # vera_b is used whole at any rank > 0

    def __init__(self, base: nn.Linear, max_rank: int, shared: VeRAShared, device=None, dtype=None):
        super().__init__(max_rank)
        self.base = base
        a, _ = shared.pair(base.in_features, base.out_features)
        if a.shape[0] < max_rank:
            raise ValueError(f"VeRALinear: the shared matrices hold rank {a.shape[0]}, below {max_rank}")
        self._shared = (shared,)  # a tuple: nn.Module would register a module attribute as a child
        dd = dict(device=device or base.weight.device, dtype=dtype or base.weight.dtype)
        self.vera_d = nn.Parameter(torch.full((max_rank,), D_INIT, **dd))
        self.vera_b = nn.Parameter(torch.zeros(base.out_features, **dd))

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def shared_pair(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's frozen ``A`` (max rank × in) and ``B`` (out × max rank) for this shape."""
        return self._shared[0].pair(self.in_features, self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        r = self.size
        if r == 0:
            return y
        a, b = self.shared_pair()
        return y + self.vera_b * F.linear(F.linear(x, a[:r]) * self.vera_d[:r], b[:, :r])

    def delta_weight(self) -> torch.Tensor:
        """The active update as a dense ``out × in`` matrix: ``diag(b) B[:, :r] diag(d[:r]) A[:r]``."""
        r = self.size
        a, b = self.shared_pair()
        return (self.vera_b.unsqueeze(1) * b[:, :r]) @ (self.vera_d[:r].unsqueeze(1) * a[:r])


class VeRA(Method):
    name = "vera"
    family = "low_rank"
    label = "VeRA"
    size_word = "r"
    options = (
        Option("vera_targets", ("qkv",), subset_of(*LORA_TARGETS), dump=list),
        Option("vera_seed", 0, _seed),  # the frozen random matrices' seed
    )
    foldable = True
    # Outside LoRA and DoRA on the same linear (DoRA reads its base's weight, so it must wrap the
    # plain linear), inside BitFit and SSF. The update is additive, so it folds after DoRA's
    # W ← W' and in any order with LoRA's; SSF then scales the result.
    inject_rank = 12
    fold_rank = 12

    def params(self, size, block, dims, space):
        return sum(size + block.lora[t][1] for t in space.vera_targets)

    def build_shared(self, vit, space, sizes, dd):
        ranks: dict[tuple[int, int], int] = {}
        for i, block in enumerate(vit.blocks):
            size = sizes.block_size(self.name, i)
            for target in space.vera_targets if size else ():
                linear = get_path(block, LORA_PATHS[target])
                shape = (linear.in_features, linear.out_features)
                ranks[shape] = max(ranks.get(shape, 0), size)
        return VeRAShared(space.vera_seed, ranks, dd) if ranks else None

    def inject(self, vit, space, block, size, dd, shared=None):
        return wrap_linears(vit, block, space.vera_targets, lambda linear: VeRALinear(linear, size, shared, **dd))

    def fold(self, vit, block, suffix, layer):
        fold_weight_delta(vit.get_submodule(f"blocks.{block}.{LORA_PATHS[suffix]}"), layer.delta_weight())
        return []
