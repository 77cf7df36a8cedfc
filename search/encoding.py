"""A subnet as Optuna parameters: one integer index per (method, block) into the ordered choices.

Parameter names are ``lora.03``, ``adapter.03``, ``vpt.03``, ``ssf.03`` (block 3) and
``ssf_global``; each is an ``IntDistribution(0, len(choices) - 1)``. Encoding the index rather
than the size keeps the order (a larger index is a larger module) so TPE, CMA-ES and GP see an
ordinal variable, and keeps the distribution static across trials (Optuna forbids dynamic
choices within a study). A method whose space has a single choice is not searched: it takes
that choice in every block and has no parameter.

The encoding also holds a cost table (parameters of every choice at every position), from
which the repair and the budget figures are computed quickly; the analytic
:func:`count_params` stays the reference and the tests compare the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from optuna.distributions import IntDistribution

from unitune.errors import UniTuneError
from unitune.supernet import BackboneDims, SearchSpace, Subnet
from unitune.supernet.params import block_params
from unitune.supernet.space import METHODS, SIZE_KEYS

GLOBAL = "ssf_global"


@dataclass(frozen=True)
class Position:
    """One searched (or fixed) choice: ``method`` in ``block`` (None for the global SSF)."""

    name: str
    method: str
    block: int | None
    choices: tuple[int, ...]


def param_name(method: str, block: int | None, depth: int) -> str:
    if block is None:
        return GLOBAL
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
        positions = [
            Position(param_name(m, i, depth), m, i, space.choices(m)) for m in METHODS for i in range(depth)
        ]
        positions.append(Position(GLOBAL, GLOBAL, None, space.choices(GLOBAL)))
        self.all_positions: tuple[Position, ...] = tuple(positions)
        # Only positions with a real choice are Optuna parameters.
        self.positions: tuple[Position, ...] = tuple(p for p in positions if len(p.choices) > 1)
        self.names: tuple[str, ...] = tuple(p.name for p in self.positions)
        self.distributions: dict[str, IntDistribution] = {
            p.name: IntDistribution(0, len(p.choices) - 1) for p in self.positions
        }
        self._by_name = {p.name: p for p in self.all_positions}
        # cost[name][index]: parameters that choice adds (head excluded).
        self.cost: dict[str, tuple[int, ...]] | None = None
        if dims is not None:
            self.cost = {p.name: tuple(self._choice_params(p, s) for s in p.choices) for p in self.all_positions}

    def _choice_params(self, p: Position, size: int) -> int:
        assert self.dims is not None
        if p.block is None:
            return 4 * self.dims.dim if size else 0
        return block_params(p.method, size, self.dims.blocks[p.block], self.space)

    # ---- Subnet <-> params ---------------------------------------------------------------------

    def decode(self, params: Mapping[str, int], source: str = "params") -> Subnet:
        """The subnet of a params dict; unsearched positions take their single choice."""
        unknown = set(params) - set(self.names)
        if unknown:
            raise UniTuneError(f"{source}: unknown parameter(s) {sorted(unknown)}, expected names like {self.names[:2]}")
        sizes: dict[str, list[int]] = {m: [0] * self.depth for m in METHODS}
        ssf_global = 0
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
                ssf_global = p.choices[index]
            else:
                sizes[p.method][p.block] = p.choices[index]
        return Subnet(**{m: tuple(sizes[m]) for m in METHODS}, ssf_global=ssf_global)

    def encode(self, subnet: Subnet, source: str = "subnet") -> dict[str, int]:
        """The params dict of a subnet; raises unless it fits the depth and space."""
        subnet.check(self.depth, self.space, source=source)
        return {p.name: p.choices.index(self._size(subnet, p)) for p in self.positions}

    @staticmethod
    def _size(subnet: Subnet, p: Position) -> int:
        return subnet.ssf_global if p.block is None else subnet.sizes(p.method)[p.block]

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
    """Compact per-block sizes for people reading the dashboard: ``{'sizes_lora': '10 5 0 1', ...}``."""
    out = {f"sizes_{m}": " ".join(str(s) for s in subnet.sizes(m)) for m in METHODS}
    out["sizes_ssf_global"] = str(subnet.ssf_global)
    return out


assert SIZE_KEYS == (*METHODS, GLOBAL)
