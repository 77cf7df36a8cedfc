"""Which subnet(s) a supernet training step trains: ``uniform``, ``sandwich`` or ``budget``.

- ``uniform`` (NOAH): one subnet per step, every size drawn uniformly from its choices.
- ``sandwich`` (BigNAS): the largest, the smallest and ``num_random`` uniform subnets per step,
  their gradients summed into one update, so both ends of the space are trained every step.
- ``budget``: one subnet per step, a uniform draw repaired into the search's parameter budget by
  the search's own repair, so the supernet's weights are trained on the distribution the search
  evaluates.

Sampling uses its own seeded generator, never the global one, and its state is part of a
training checkpoint; every rank of a distributed run draws the same subnets.
"""

from __future__ import annotations

import random
from typing import Any

from unitune.errors import UniTuneError

from .methods import METHODS
from .params import BackboneDims, cost_table
from .space import SearchSpace
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
        # In registry order, every method the space holds (a draw each, even from a single
        # choice, so a seeded sampler draws the subnets it always drew); the others are off.
        depth, choose, space = self.dims.depth, self.rng.choice, self.space
        sizes = {}
        for name, method in METHODS.items():
            if space.holds(name):
                draw = [choose(space.choices(name)) for _ in range(depth if method.site == "block" else 1)]
                sizes[name] = tuple(draw) if method.site == "block" else draw[0]
        return Subnet(**sizes)

    def _cost_floor(self) -> int:
        return sum(costs[0] for costs in cost_table(self.space, self.dims).values())  # the smallest choices

    def within_budget(self) -> Subnet:
        """A subnet as the search evaluates them: a uniform proposal, repaired into the budget by
        the search's own repair (``supernet/repair.py``, seeded from this sampler's generator), so
        the supernet trains the distribution the search draws from (issue 15), near the budget
        when uniform proposals exceed it."""
        from .encoding import SubnetEncoding  # (it names its positions as Optuna distributions: loaded on use)
        from .repair import repair_subnet

        if getattr(self, "_encoding", None) is None:
            self._encoding = SubnetEncoding(self.space, self.dims.depth, self.dims)
        proposal = self.uniform()
        return repair_subnet(self._encoding, proposal, self.budget, seed=self.rng.getrandbits(63))

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = self.rng.getstate()
        return {"version": version, "internal": list(internal), "gauss": gauss}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.setstate((state["version"], tuple(state["internal"]), state["gauss"]))
