"""Exact, analytic parameter counts of a subnet on a given backbone.

The counts come from the backbone's dimensions alone (no PEFT layer is built) and equal the
number of parameters a materialised subnet holds; the tests check one against the other.
For ViT-B/16 (d = 768, MLP 3072, 12 blocks):

- LoRA rank r on a linear ``in → out``: ``r·(in + out)``; on the fused qkv that is ``4·d·r``.
- Adapter width k: ``2·d·k + k + d`` (down and up weights and biases).
- VPT-deep, p tokens: ``p·d``.
- SSF in a block: ``2·(d + 3d + d + d + 4d + d) = 22·d``; global SSF: ``2·(d + d)``.

Each method's formula lives with the method (``supernet/methods/<name>.py``, ``Method.params``).

The budget excludes the classifier head (as NOAH counts); ``with_head`` adds it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .methods import METHODS, Method
from .methods.dims import BackboneDims
from .space import SearchSpace
from .subnet import Subnet


@dataclass(frozen=True)
class ParamCount:
    per_method: dict[str, int]  # by report key: lora, adapter, vpt, ssf (global SSF included in ssf)
    per_block: tuple[dict[str, int], ...]  # block methods, per block
    per_model: dict[str, int]  # model-level methods (ssf_global)
    head: int

    def __getattr__(self, name: str) -> int:
        # ``count.ssf_global``: a model-level method's parameters (0 when off or not shown).
        if not name.startswith("_") and name in METHODS and METHODS[name].site == "model":
            return self.per_model.get(name, 0)
        raise AttributeError(name)

    @property
    def total(self) -> int:
        """Trainable PEFT parameters, head excluded: what the budget constrains."""
        return sum(self.per_method.values())

    @property
    def with_head(self) -> int:
        return self.total + self.head

    def to_dict(self) -> dict:
        return {
            "trainable_params": self.total,
            "head_params": self.head,
            "trainable_params_with_head": self.with_head,
            "per_method": dict(self.per_method),
            **{name: n for name, n in self.per_model.items()},
            "per_block": [dict(b) for b in self.per_block],
        }


# ---- the one cost table ------------------------------------------------------------------------

def positions(depth: int) -> list[tuple[Method, int | None]]:
    """Every (method, block) a subnet sets, in registry order: ``lora`` in blocks 0..depth-1, ...,
    ``ssf`` in every block, then ``ssf_global`` (block ``None``): the Optuna parameter order."""
    return [(m, i) for m in METHODS.values() for i in (range(depth) if m.site == "block" else (None,))]


def cost_table(space: SearchSpace, dims: BackboneDims) -> dict[tuple[str, int | None], tuple[int, ...]]:
    """Parameters each choice of ``space`` adds at each position, head excluded: the one table the
    repair (through the encoding), the supernet's samplers and the budget bounds read.
    :func:`count_params` computes the same numbers subnet by subnet; the tests compare the two."""
    return {
        (m.name, i): tuple(m.count(s, None if i is None else dims.blocks[i], dims, space) for s in space.choices(m.name))
        for m, i in positions(dims.depth)
    }


def count_params(subnet: Subnet, dims: BackboneDims, space: SearchSpace | None = None) -> ParamCount:
    space = space or SearchSpace()
    subnet.check(dims.depth)
    shown = [METHODS[name] for name in subnet.shown_methods(space)]
    per_block = tuple(
        {m.name: m.count(subnet.sizes(m.name)[i], block, dims, space) for m in shown if m.site == "block"}
        for i, block in enumerate(dims.blocks)
    )
    per_model = {m.name: m.count(subnet.sizes(m.name), None, dims, space) for m in shown if m.site == "model"}
    per_method: dict[str, int] = {}
    for m in shown:
        n = sum(b[m.name] for b in per_block) if m.site == "block" else per_model[m.name]
        per_method[m.report_key] = per_method.get(m.report_key, 0) + n
    return ParamCount(per_method, per_block, per_model, dims.head_params)
