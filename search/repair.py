"""Shrink an over-budget subnet until it fits: the hard budget, enforced before evaluation.

The rule (deterministic, no randomness, no fitness model):

1. While the subnet is over budget, consider every searched position whose index is above 0
   and the parameters that lowering it by one index would save.
2. If some single step brings the subnet within budget, take the one that saves the *fewest*
   parameters among those (the subnet ends as close under the budget as one step allows).
3. Otherwise take the step that saves the *most* parameters.
4. Ties go to the first position in encoding order (lora.00, lora.01, ..., adapter.00, ...,
   ssf_global).

Why: with no model of which module matters, the rule changes as few of the sampler's decisions
as it can (largest cuts first is the greedy way to fit in the fewest one-index steps), so the
stored, repaired subnet stays close to what the sampler proposed and the sampler learns from
points near its own proposals; the last step then lands as close under the budget as one step
allows, since unused budget is usually lost accuracy. A consequence to know: an SSF block
(22·d parameters, indivisible) or a top-size LoRA is usually the largest single step, so those
are the first cut from an over-budget proposal; SSF survives in proposals that fit as sampled.

A subnet already within budget is returned unchanged. The result is always valid in the space
(indices only ever move down within their choices) and within budget, provided the budget is
at least the all-smallest subnet, which :func:`check_budget` guarantees.
"""

from __future__ import annotations

from typing import Mapping

from unitune.errors import UniTuneError
from unitune.supernet import Subnet

from .encoding import SubnetEncoding


def repair_params(encoding: SubnetEncoding, params: Mapping[str, int], budget: int) -> tuple[dict[str, int], int]:
    """(repaired params, number of one-index steps taken) for an encoded subnet."""
    if encoding.cost is None:
        raise ValueError("repair needs an encoding built with backbone dimensions")
    current = {name: int(params[name]) for name in encoding.names}
    total = encoding.n_params(current)
    steps = 0
    while total > budget:
        best_fit: tuple[int, str] | None = None  # (saving, name): smallest saving that fits
        best_cut: tuple[int, str] | None = None  # largest saving
        for name in encoding.names:
            index = current[name]
            if index == 0:
                continue
            saving = encoding.cost[name][index] - encoding.cost[name][index - 1]
            if total - saving <= budget and (best_fit is None or saving < best_fit[0]):
                best_fit = (saving, name)
            if best_cut is None or saving > best_cut[0]:
                best_cut = (saving, name)
        if best_cut is None:
            raise UniTuneError(
                f"budget: {budget} parameters is below the smallest subnet of this space ({total} parameters)"
            )
        saving, name = best_fit or best_cut
        current[name] -= 1
        total -= saving
        steps += 1
    return current, steps


def repair_subnet(encoding: SubnetEncoding, subnet: Subnet, budget: int) -> Subnet:
    """The repaired :class:`Subnet` (see the module docstring for the rule)."""
    params, _ = repair_params(encoding, encoding.encode(subnet), budget)
    return encoding.decode(params)
