"""Which subnet(s) a supernet training step trains: ``uniform``, ``sandwich`` or ``budget``.

- ``uniform`` (NOAH): one subnet per step, every size drawn uniformly from its choices.
- ``sandwich`` (BigNAS): the largest, the smallest and ``num_random`` uniform subnets per step,
  their gradients summed into one update, so both ends of the space are trained every step.
- ``budget``: one subnet per step, drawn only among those within the parameter budget the
  search will use, so the supernet's weights are trained where the search will look.

Sampling uses its own seeded generator, never the global one, and its state is part of a
training checkpoint; every rank of a distributed run draws the same subnets.
"""

from __future__ import annotations

import random
from typing import Any

from unitune.errors import UniTuneError

from .params import BackboneDims, block_params
from .space import METHODS, SearchSpace
from .subnet import Subnet

STRATEGIES = ("uniform", "sandwich", "budget")


class SubnetSampler:
    def __init__(
        self,
        space: SearchSpace,
        dims: BackboneDims,
        strategy: str = "uniform",
        seed: int = 0,
        budget: int | None = None,
        num_random: int = 1,
    ):
        if strategy not in STRATEGIES:
            raise UniTuneError(f"supernet.sampler: expected one of {list(STRATEGIES)}, got {strategy!r}")
        if strategy == "budget" and budget is None:
            raise UniTuneError("supernet.budget: the 'budget' sampler needs a parameter budget")
        self.space, self.dims, self.strategy = space, dims, strategy
        self.budget, self.num_random = budget, num_random
        self.rng = random.Random(seed)
        if strategy == "budget":
            floor = self._cost_floor()
            if floor > budget:
                raise UniTuneError(
                    f"supernet.budget: {budget:,} is below the smallest subnet of the space ({floor:,} parameters)"
                )

    def __call__(self) -> list[Subnet]:
        if self.strategy == "sandwich":
            depth = self.dims.depth
            return [Subnet.largest(self.space, depth), Subnet.smallest(self.space, depth)] + [
                self.uniform() for _ in range(self.num_random)
            ]
        if self.strategy == "budget":
            return [self.within_budget()]
        return [self.uniform()]

    def uniform(self) -> Subnet:
        depth, choose = self.dims.depth, self.rng.choice
        sizes = {m: tuple(choose(self.space.choices(m)) for _ in range(depth)) for m in METHODS}
        return Subnet(**sizes, ssf_global=choose(self.space.ssf_global))

    def _cost(self, method: str, block: int, size: int) -> int:
        if method == "ssf_global":
            return 4 * self.dims.dim * size
        return block_params(method, size, self.dims.blocks[block], self.space)

    def _slots(self) -> list[tuple[str, int]]:
        return [(m, i) for m in METHODS for i in range(self.dims.depth)] + [("ssf_global", 0)]

    def _cost_floor(self) -> int:
        return sum(self._cost(m, i, self.space.min_size(m)) for m, i in self._slots())

    def within_budget(self) -> Subnet:
        """A random subnet within the budget: visit the (method, block) slots in random order,
        each picking uniformly among the sizes that still fit, starting from the smallest."""
        slots = self._slots()
        sizes = {slot: self.space.min_size(slot[0]) for slot in slots}
        spent = self._cost_floor()
        self.rng.shuffle(slots)
        for m, i in slots:
            base = self._cost(m, i, sizes[(m, i)])
            fits = [s for s in self.space.choices(m) if spent - base + self._cost(m, i, s) <= self.budget]
            pick = self.rng.choice(fits)
            spent += self._cost(m, i, pick) - base
            sizes[(m, i)] = pick
        depth = self.dims.depth
        lists = {m: tuple(sizes[(m, i)] for i in range(depth)) for m in METHODS}
        return Subnet(**lists, ssf_global=sizes[("ssf_global", 0)])

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = self.rng.getstate()
        return {"version": version, "internal": list(internal), "gauss": gauss}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.setstate((state["version"], tuple(state["internal"]), state["gauss"]))
