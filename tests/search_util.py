"""Shared helpers of the search tests: a tiny backbone, synthetic fitness with a known optimum,
and an independent decoder (not unitune's) to check what the storage holds."""

from __future__ import annotations

import functools
import math

from unitune.supernet import BackboneDims, SearchSpace, Subnet, count_params
from unitune.supernet.space import METHODS

TINY = dict(num_classes=5, img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4)


def tiny_vit(**variant):
    import timm

    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY, **variant)


@functools.lru_cache(maxsize=None)
def tiny_dims() -> BackboneDims:
    return BackboneDims.from_model(tiny_vit())


# Per-method weights and per-block weights of an additive, concave fitness: accuracy grows with
# every module, with diminishing returns, differently per block, so the optimum under a budget
# is a non-trivial mix that a knapsack DP computes exactly.
WEIGHT = {"lora": 0.010, "adapter": 0.012, "vpt": 0.006, "ssf": 0.020, "ssf_global": 0.015}
BLOCK = (1.0, 0.6, 1.4, 0.8, 1.2, 0.9, 1.1, 0.7)


def position_value(method: str, block: int | None, size: int) -> float:
    scale = 1.0 if block is None else BLOCK[block % len(BLOCK)]
    return WEIGHT[method] * scale * math.sqrt(size)


def synthetic_accuracy(subnet: Subnet) -> float:
    value = 0.5 + position_value("ssf_global", None, subnet.ssf_global)
    for m in METHODS:
        for i, s in enumerate(subnet.sizes(m)):
            value += position_value(m, i, s)
    return value


def knapsack_optimum(space: SearchSpace, dims: BackboneDims, budget: int) -> float:
    """Best synthetic accuracy of any subnet within budget, by exact DP over parameter counts."""
    from unitune.supernet.methods import METHODS as REGISTRY

    groups = []
    for m in METHODS:
        for i, block in enumerate(dims.blocks):
            groups.append([(REGISTRY[m].count(s, block, None, space), position_value(m, i, s)) for s in space.choices(m)])
    groups.append([(4 * dims.dim if s else 0, position_value("ssf_global", None, s)) for s in space.ssf_global])
    best = {0: 0.0}  # params used -> best value
    for options in groups:
        nxt: dict[int, float] = {}
        for used, val in best.items():
            for cost, v in options:
                u = used + cost
                if u <= budget and nxt.get(u, -1.0) < val + v:
                    nxt[u] = val + v
        best = nxt
    return 0.5 + max(best.values())


def decode_independently(params: dict, space: SearchSpace, depth: int) -> Subnet:
    """Decode stored trial params without unitune's encoding: 'lora.03' = 4 is rank 4 in block 3
    (the stored value is the size itself, one of the space's choices)."""
    sizes = {m: [space.choices(m)[0]] * depth for m in METHODS}
    ssf_global = space.ssf_global[0]
    for name, size in params.items():
        method = name if name == "ssf_global" else name.split(".")[0]
        assert size in space.choices(method), (name, size, space.choices(method))
        if name == "ssf_global":
            ssf_global = size
        else:
            sizes[method][int(name.split(".")[1])] = size
    return Subnet(**{m: tuple(v) for m, v in sizes.items()}, ssf_global=ssf_global)


def n_params(subnet: Subnet, space: SearchSpace | None = None) -> int:
    return count_params(subnet, tiny_dims(), space or SearchSpace()).total
