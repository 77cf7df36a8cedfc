"""The trainable-parameter budget: parsing it, and the range of budgets a search space allows.

A budget counts PEFT parameters with the classifier head excluded (as NOAH counts), i.e.
:attr:`ParamCount.total`. It is written as a plain count (``400000``), with a suffix
(``400k``, ``0.4M``), or as a percentage of the backbone's own parameter count (``0.5%``).
"""

from __future__ import annotations

import math
import re
import warnings

from unitune.errors import UniTuneError, UniTuneWarning
from unitune.supernet import BackboneDims, SearchSpace, cost_table


def budget_bounds(space: SearchSpace, dims: BackboneDims) -> tuple[int, int]:
    """(parameters of the smallest non-empty subnet, parameters of the largest subnet) of ``space``.

    The smallest non-empty subnet is the all-smallest subnet if that already holds parameters
    (a method whose only choices are non-zero), else the cheapest single non-zero choice in one
    block (or the global SSF) on top of it.
    """
    table = cost_table(space, dims)  # choices are increasing: the first is the smallest
    smallest = sum(costs[0] for costs in table.values())
    largest = sum(costs[-1] for costs in table.values())
    if smallest > 0:
        return smallest, largest
    steps = [c for costs in table.values() for c in costs if c > 0]
    if not steps:
        raise UniTuneError(f"{space.source}: every choice is 0, so the space holds no subnet with parameters")
    return min(steps), largest


def check_budget(budget: int, space: SearchSpace, dims: BackboneDims, source: str = "budget") -> int:
    """Raise if no non-empty subnet fits ``budget``; warn if every subnet does. Returns ``budget``."""
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise UniTuneError(f"{source}: expected a positive parameter count, got {budget!r}")
    low, high = budget_bounds(space, dims)
    if budget < low:
        raise UniTuneError(
            f"{source}: {budget} parameters is below the smallest non-empty subnet of this space ({low} parameters)"
        )
    if budget >= high:
        warnings.warn(
            f"{source}: {budget} parameters is at or above the largest subnet of this space ({high} parameters); "
            "every subnet fits, so the budget does not constrain the search",
            UniTuneWarning,
            stacklevel=2,
        )
    return budget


_SUFFIX = {"": 1, "k": 1_000, "m": 1_000_000, "g": 1_000_000_000}
_BUDGET_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmg%]?)\s*$", re.IGNORECASE)


def parse_budget(value: str | int | float, backbone_params: int | None = None, source: str = "budget") -> int:
    """``400000``, ``'400k'``, ``'0.4M'``, ``'0.5%'`` -> a positive parameter count.

    ``backbone_params`` (the frozen backbone's parameter count) is needed for a percentage only.
    """
    if isinstance(value, bool):
        raise UniTuneError(f"{source}: expected a parameter count like 400000, 0.4M, 400k or 0.5%, got {value!r}")
    if isinstance(value, (int, float)):
        number, suffix = float(value), ""
    else:
        match = _BUDGET_RE.match(str(value))
        if not match:
            raise UniTuneError(f"{source}: expected a parameter count like 400000, 0.4M, 400k or 0.5%, got {value!r}")
        number, suffix = float(match.group(1)), match.group(2).lower()
    if suffix == "%":
        if backbone_params is None:
            raise UniTuneError(f"{source}: {value!r} is a percentage of the backbone, but its parameter count is unknown")
        if not 0 < number <= 100:
            raise UniTuneError(f"{source}: a percentage must be in (0, 100], got {value!r}")
        budget = number / 100 * backbone_params
    else:
        budget = number * _SUFFIX[suffix]
    if not math.isfinite(budget) or round(budget) < 1:
        raise UniTuneError(f"{source}: expected a positive parameter count, got {value!r}")
    return int(round(budget))
