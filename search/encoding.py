"""A subnet as Optuna parameters: one integer index per (method, block) into the ordered choices.

Parameter names are ``lora.03``, ``adapter.03``, ``vpt.03``, ``ssf.03`` (block 3) and
``ssf_global`` (a model-level method: its name), in the registry's order; each is an ``IntDistribution(0, len(choices) - 1)``. Encoding the index rather
than the size keeps the order (a larger index is a larger module) so TPE, CMA-ES and GP see an
ordinal variable, and keeps the distribution static across trials (Optuna forbids dynamic
choices within a study). A method whose space has a single choice is not searched: it takes
that choice in every block and has no parameter.

The encoding also holds the cost table (:func:`~unitune.supernet.params.cost_table`: parameters
of every choice at every position), from which the repair and the budget figures are computed quickly; the analytic
:func:`count_params` stays the reference and the tests compare the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from optuna.distributions import IntDistribution

from unitune.errors import UniTuneError
from unitune.supernet import BackboneDims, SearchSpace, Subnet, cost_table
from unitune.supernet.methods import METHODS
from unitune.supernet.params import positions


@dataclass(frozen=True)
class Position:
    """One searched (or fixed) choice: ``method`` in ``block`` (None for a model-level method)."""

    name: str
    method: str
    block: int | None
    choices: tuple[int, ...]


def param_name(method: str, block: int | None, depth: int) -> str:
    if block is None:
        return method  # a model-level method: one parameter, its name (``ssf_global``)
    width = max(2, len(str(depth - 1)))
    return f"{method}.{block:0{width}d}"


class SubnetEncoding:
    """Maps :class:`Subnet` <-> ``{name: index}`` for a space on a backbone of ``depth`` blocks.

    ``dims`` is optional: without it (e.g. when exporting from a storage) the encoding decodes
    and encodes but cannot count parameters.
    """

    def __init__(self, space: SearchSpace, depth: int, dims: BackboneDims | None = None):
        if dims is not None and dims.depth != depth:
            raise ValueError(f"depth {depth} does not match the backbone's {dims.depth} blocks")
        self.space = space
        self.depth = depth
        self.dims = dims
        # Registry order: lora.00 .. lora.NN, adapter.*, vpt.*, ssf.*, ssf_global, then methods
        # registered later (a method the space does not hold has one choice and no parameter).
        self.all_positions: tuple[Position, ...] = tuple(
            Position(param_name(m.name, i, depth), m.name, i, space.choices(m.name)) for m, i in positions(depth)
        )
        # Only positions with a real choice are Optuna parameters.
        self.positions: tuple[Position, ...] = tuple(p for p in self.all_positions if len(p.choices) > 1)
        self.names: tuple[str, ...] = tuple(p.name for p in self.positions)
        self.distributions: dict[str, IntDistribution] = {
            p.name: IntDistribution(0, len(p.choices) - 1) for p in self.positions
        }
        self._by_name = {p.name: p for p in self.all_positions}
        # cost[name][index]: parameters that choice adds (head excluded).
        self.cost: dict[str, tuple[int, ...]] | None = None
        if dims is not None:
            table = cost_table(space, dims)
            self.cost = {p.name: table[p.method, p.block] for p in self.all_positions}

    # ---- Subnet <-> params ---------------------------------------------------------------------

    def decode(self, params: Mapping[str, int], source: str = "params") -> Subnet:
        """The subnet of a params dict; unsearched positions take their single choice."""
        unknown = set(params) - set(self.names)
        if unknown:
            raise UniTuneError(f"{source}: unknown parameter(s) {sorted(unknown)}, expected names like {self.names[:2]}")
        sizes: dict[str, list[int] | int] = {m: [0] * self.depth if method.site == "block" else 0
                                             for m, method in METHODS.items()}
        for p in self.all_positions:
            if len(p.choices) == 1:
                index = 0
            elif p.name in params:
                index = params[p.name]
            else:
                raise UniTuneError(f"{source}: parameter {p.name!r} is missing")
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(p.choices):
                raise UniTuneError(f"{source}: {p.name} = {index!r} is not an index into {list(p.choices)}")
            if p.block is None:
                sizes[p.method] = p.choices[index]
            else:
                sizes[p.method][p.block] = p.choices[index]
        return Subnet(**{m: tuple(v) if isinstance(v, list) else v for m, v in sizes.items()})

    def encode(self, subnet: Subnet, source: str = "subnet") -> dict[str, int]:
        """The params dict of a subnet; raises unless it fits the depth and space."""
        subnet.check(self.depth, self.space, source=source)
        return {p.name: p.choices.index(self._size(subnet, p)) for p in self.positions}

    @staticmethod
    def _size(subnet: Subnet, p: Position) -> int:
        return subnet.block_size(p.method, p.block)

    def full_indices(self, params: Mapping[str, int]) -> dict[str, int]:
        """Index of every position, fixed ones included (index 0 of a single choice)."""
        return {p.name: (params[p.name] if len(p.choices) > 1 else 0) for p in self.all_positions}

    # ---- parameter counts ----------------------------------------------------------------------

    def n_params(self, params: Mapping[str, int]) -> int:
        """Trainable PEFT parameters (head excluded) of the subnet ``params`` encodes."""
        if self.cost is None:
            raise ValueError("this encoding has no backbone dimensions to count parameters with")
        return sum(self.cost[name][i] for name, i in self.full_indices(params).items())

    def to_dict(self) -> dict[str, Any]:
        return {"depth": self.depth, "names": list(self.names)}


def sizes_summary(subnet: Subnet) -> dict[str, str]:
    """Compact per-block sizes for people reading the dashboard: ``{'sizes_lora': '10 5 0 1', ...,
    'sizes_ssf_global': '1'}``: the original methods always, a later one when it is on."""
    out = {}
    for m in subnet.shown_methods():
        sizes = subnet.sizes(m)
        out[f"sizes_{m}"] = " ".join(map(str, sizes)) if isinstance(sizes, tuple) else str(sizes)
    return out
