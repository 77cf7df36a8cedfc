"""Shrink an over-budget subnet until it fits: the hard budget, enforced before evaluation.

The rule (seeded, so deterministic given the trial's seed; no fitness model):

1. **Scale.** Every searched position keeps the same expected share ``alpha`` of the
   parameters it adds above its smallest choice, ``alpha = (budget - smallest subnet) /
   (proposal - smallest subnet)``. A position's target ``smallest + alpha * added`` usually falls
   between two of its choices; it takes the upper one with probability equal to how far the
   target lies towards it (randomized rounding), so in expectation it keeps exactly ``alpha``.
   An SSF block (on/off, 22·d parameters) thus survives with probability ``alpha``, whatever its
   block or how large a single cut it is.
2. **Trim.** Rounding can land over budget: while it does, cut one index at a position drawn
   with probability proportional to the number of cuts of its current size it still holds
   (its added parameters over the saving of the cut), which again takes the same expected
   share from every position.
3. **Fill.** Then, in a random order, give back single indices the repair took (never beyond
   the proposal) while they fit, until none fits: the subnet ends close under the budget.

Why: the former rule (fewest one-index cuts, ties to the first position in encoding order)
cut the biggest single steps first and, among equals, the earliest blocks: on ViT-B/16 at 0.3M
SSF kept 2.5 of 6.0 proposed blocks, surviving in block 0 in 7% of subnets against 39% in block
11 (``benchmarks/bench_repair_bias.py``, RESULTS.md). The samplers learn from the stored,
repaired subnets, so a biased repair biases the whole search. This rule treats every method and
block alike in expectation; the randomness comes from ``seed`` (the search passes the worker's
sampler seed and the trial number), so a trial's repair can be replayed.

A subnet already within budget is returned unchanged. The result is always valid in the space
(indices only move down from the proposal) and within budget, provided the budget is at least
the all-smallest subnet, which :func:`check_budget` guarantees.

The rule works on indices into each position's choices (:func:`repair_indices`, what the
samplers propose); :func:`repair_params` takes and returns params in sizes, as Optuna stores them.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from unitune.errors import UniTuneError
from unitune.supernet import Subnet

from .encoding import SubnetEncoding


def repair_params(
    encoding: SubnetEncoding, params: Mapping[str, int], budget: int, seed: int | Sequence[int] = 0
) -> tuple[dict[str, int], int]:
    """(repaired params, number of one-index cuts between proposal and result) for params in sizes."""
    repaired, steps = repair_indices(encoding, encoding.to_indices(params), budget, seed)
    return encoding.from_indices(repaired), steps


def repair_indices(
    encoding: SubnetEncoding, indices: Mapping[str, int], budget: int, seed: int | Sequence[int] = 0
) -> tuple[dict[str, int], int]:
    """:func:`repair_params` on a subnet given as indices into its choices; returns indices."""
    cost = encoding.cost
    if cost is None:
        raise ValueError("repair needs an encoding built with backbone dimensions")
    proposal = {name: int(indices[name]) for name in encoding.names}
    total = encoding.n_params_at(proposal)
    if total <= budget:
        return proposal, 0
    floor = encoding.n_params_at({name: 0 for name in encoding.names})
    if floor > budget:
        raise UniTuneError(f"budget: {budget} parameters is below the smallest subnet of this space ({floor} parameters)")
    rng = np.random.default_rng(seed)
    added = {name: cost[name][i] - cost[name][0] for name, i in proposal.items()}
    alpha = (budget - floor) / sum(added.values())

    # 1. scale every position by alpha, with randomized rounding between neighbouring choices
    current = dict(proposal)
    draws = rng.random(len(encoding.names))
    for name, u in zip(encoding.names, draws):
        c = cost[name]
        target = c[0] + alpha * added[name]
        j = max(j for j in range(proposal[name] + 1) if c[j] <= target)
        if j < proposal[name] and c[j + 1] > c[j] and u < (target - c[j]) / (c[j + 1] - c[j]):
            j += 1
        current[name] = j
    total = encoding.n_params_at(current)

    # 2. trim: one cut at a time, a position drawn by how many cuts of its size it holds
    while total > budget:
        names, weights = [], []
        for name, i in current.items():
            saving = cost[name][i] - cost[name][i - 1] if i > 0 else 0
            if saving > 0:
                names.append(name)
                weights.append((cost[name][i] - cost[name][0]) / saving)
        w = np.asarray(weights)
        name = names[int(rng.choice(len(names), p=w / w.sum()))]
        total -= cost[name][current[name]] - cost[name][current[name] - 1]
        current[name] -= 1

    # 3. fill: give back single cuts, in a random order, while they fit
    changed = True
    while changed:
        changed = False
        cut = [name for name in encoding.names if current[name] < proposal[name]]
        for k in rng.permutation(len(cut)):
            name = cut[int(k)]
            step = cost[name][current[name] + 1] - cost[name][current[name]]
            if total + step <= budget:
                current[name] += 1
                total += step
                changed = True
    steps = sum(proposal[name] - current[name] for name in encoding.names)
    return current, steps


def repair_subnet(encoding: SubnetEncoding, subnet: Subnet, budget: int, seed: int | Sequence[int] = 0) -> Subnet:
    """The repaired :class:`Subnet` (see the module docstring for the rule)."""
    params, _ = repair_params(encoding, encoding.encode(subnet), budget, seed)
    return encoding.decode(params)
