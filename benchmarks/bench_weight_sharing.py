"""The cost of weight sharing: a supernet training step vs the same subnet materialised statically.

    python benchmarks/bench_weight_sharing.py                                   # tiny ViT, CPU
    python benchmarks/bench_weight_sharing.py --backbone vit_base_patch16_224   # ViT-B/16, random init
    python benchmarks/bench_weight_sharing.py --quick

One training step = forward, loss, backward, AdamW step, exactly as ``unitune supernet`` does it:
the supernet (every PEFT layer allocated at the space's largest size) has the subnet set with
``set_subnet`` before the step and :class:`InactiveGuard` on its optimiser; the static model is
``supernet.materialize(subnet)`` (exactly the subnet's sizes, no guard needed). Both train on the
same batch, interleaved in each repeat.

Two subnets: the largest (the issue's target, supernet / static <= 1.10), and a random subnet
repaired into a budget, where the supernet really slices its tensors and the guard restores the
inactive entries.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from common import add_common_args, build_vit, interleaved, median_ratio, setup, space_for
from unitune.engine.config import TrainConfig
from unitune.supernet.encoding import SubnetEncoding
from unitune.supernet.repair import repair_subnet
from unitune.supernet import BackboneDims, PeftViT, Subnet, count_params
from unitune.supernet.guard import InactiveGuard
from unitune.engine.train import Criterion, build_optimizer

TARGET = 1.10


def random_subnet(space, dims: BackboneDims, budget: int, seed: int) -> Subnet:
    """A uniformly drawn subnet, repaired into ``budget`` as the search does."""
    rng = random.Random(seed)
    draw = {m: tuple(rng.choice(space.choices(m)) for _ in range(dims.depth)) for m in ("lora", "adapter", "vpt", "ssf")}
    subnet = Subnet(**draw, ssf_global=rng.choice(space.choices("ssf_global")))
    return repair_subnet(SubnetEncoding(space, dims.depth, dims), subnet, budget)


def trainer(model: PeftViT, subnet: Subnet | None, x: torch.Tensor, y: torch.Tensor, guard: bool):
    """One training step of ``model`` on ``(x, y)``; ``subnet`` is set first (the supernet's way)."""
    cfg = TrainConfig(lr=1e-3)
    optimizer = build_optimizer(model.trainable_named_parameters(), cfg)
    if guard:
        InactiveGuard(model, optimizer)
    criterion = Criterion(cfg, int(y.max()) + 1)
    model.train()

    def step() -> None:
        if subnet is not None:
            model.set_subnet(subnet)
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()

    return step


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap)
    ap.add_argument("--batch", type=int, default=None, help="default: 32 (tiny), 4 (ViT-B)")
    ap.add_argument("--repeats", type=int, default=None, help="default: 30 (tiny), 5 (ViT-B); --quick: fewer")
    ap.add_argument("--budget", type=float, default=0.5, help="the random subnet's budget, a fraction of the largest")
    args = ap.parse_args(argv)
    device = setup(args)
    tiny = args.backbone == "tiny"
    batch = args.batch or (32 if tiny else 4)
    repeats = args.repeats or ((10 if args.quick else 30) if tiny else (2 if args.quick else 5))

    vit, name, _ = build_vit(args.backbone, num_classes=100)
    space = space_for(args.backbone)
    supernet = PeftViT(vit, space).to(device)
    dims = BackboneDims.from_model(supernet)
    largest = Subnet.largest(space, dims.depth)
    budget = int(args.budget * count_params(largest, dims, space).total)
    subnets = {"largest": largest, "random in budget": random_subnet(space, dims, budget, seed=0)}
    g = torch.Generator().manual_seed(0)
    size = supernet.vit.patch_embed.img_size
    x = torch.randn(batch, 3, *size, generator=g).to(device)
    y = torch.randint(0, 100, (batch,), generator=g).to(device)
    with torch.no_grad():  # trained-looking PEFT weights (B and up-projections start at zero)
        for _, p in supernet.peft_named_parameters():
            p.add_(torch.randn(p.shape, generator=g).to(device) * 0.02)

    print(f"\n{name}, batch {batch}, {device}, {repeats} interleaved repeats (+1 warm-up); one step = "
          f"forward + backward + AdamW")
    print(f"{'subnet':<18} {'PEFT params':>12} {'supernet ms':>12} {'static ms':>10} {'ratio':>7} {'min ratio':>9}")
    results = {}
    for label, subnet in subnets.items():
        static = supernet.materialize(subnet).to(device)  # before the supernet's steps change its weights
        fns = {"supernet": trainer(supernet, subnet, x, y, guard=True),
               "static": trainer(static, None, x, y, guard=False)}
        t0 = time.perf_counter()
        times = interleaved(fns, repeats, warmup=1, device=device)
        ratio = median_ratio(times["supernet"], times["static"])
        n = count_params(subnet, dims, space).total
        results[label] = {"params": n, "ratio": ratio, "supernet_ms": 1000 * statistics.median(times["supernet"]),
                          "static_ms": 1000 * statistics.median(times["static"]),
                          "min_ratio": min(times["supernet"]) / min(times["static"]), "seconds": time.perf_counter() - t0}
        r = results[label]
        print(f"{label:<18} {n:>12,} {r['supernet_ms']:>12.1f} {r['static_ms']:>10.1f} {ratio:>7.3f} {r['min_ratio']:>9.3f}")
        del static
    ratio = results["largest"]["ratio"]
    print(f"\nsupernet / static step, largest subnet = {ratio:.3f} "
          f"({'meets' if ratio <= TARGET else 'misses'} the <= {TARGET} target)")
    return results


if __name__ == "__main__":
    main()
