"""The inactive-entry guard's cost per optimizer step (issue 13), before and after deciding
what is idle from shapes on the host and copying only the idle slices.

    python benchmarks/bench_guard.py --threads 1

A random-init ViT-B/16 supernet (the default search space, LoRA on qkv: 232 PEFT tensors) and
three AdamW optimizers over its PEFT parameters: ``no guard``, ``before`` (the previous guard:
a fresh mask per PEFT tensor and ``bool(mask.all())`` each step, whole-tensor snapshots restored
with ``torch.where``; the tests' reference guard) and ``after`` (:class:`InactiveGuard` now: idle
slices found from shapes, only they copied and put back). Each timed step: set a subnet (drawn
from the space with a fixed seed: the same sequence for every variant), record it as the guard's
forward hook would, then ``optimizer.step()`` (gradients are fixed random tensors). Blocks of steps are interleaved
across the variants; medians of the per-block means. Also counted (device-independent): the
aten ops the guard adds to a step (kernel launches on a GPU) and the host reads of a tensor's
value (synchronisations on a GPU; AdamW's own, on its CPU step counters, are none). On the CPU ``bool(mask.all())`` is no
device synchronisation, so this measures the host-side work only; on a GPU each of those calls
would also wait for the device.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import timm
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from unitune.engine.config import TrainConfig
from unitune.supernet import PeftViT, SearchSpace, Subnet
from unitune.supernet.guard import InactiveGuard
from unitune.engine.train import build_optimizer


class OpCount(TorchDispatchMode):
    """aten ops other than views (each a kernel launch on a GPU) and host reads of a tensor's value
    (``_local_scalar_dense``: a host-device synchronisation on a GPU)."""

    def __init__(self):
        super().__init__()
        self.ops = self.syncs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += not func.is_view  # views (slicing, detach) launch nothing
        self.syncs += func.overloadpacket.__name__ == "_local_scalar_dense"
        return func(*args, **(kwargs or {}))


# The guard as it was (commit 6ed6835: masks for every PEFT tensor each step, one
# ``bool(mask.all())`` each, ``torch.where`` merges) is the test suite's second computation;
# measured here against the current one.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_guard_cost import ReferenceGuard as PreviousGuard  # noqa: E402


def random_subnet(space: SearchSpace, depth: int, rng: random.Random) -> Subnet:
    pick = lambda m: tuple(rng.choice(space.choices(m)) for _ in range(depth))  # noqa: E731
    return Subnet(pick("lora"), pick("adapter"), pick("vpt"), pick("ssf"), rng.choice(space.ssf_global))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="vit_base_patch16_224")
    ap.add_argument("--blocks", type=int, default=7)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per block and variant")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    space = SearchSpace()
    model = PeftViT(timm.create_model(args.backbone, pretrained=False, num_classes=100), space).train()
    depth = len(model.vit.blocks)
    named = list(model.peft_named_parameters())
    g = torch.Generator().manual_seed(0)
    for _, p in named:
        p.grad = torch.randn(p.shape, generator=g)
    variants = {}
    for name, guard in (("no guard", None), ("before", PreviousGuard), ("after", InactiveGuard)):
        optimizer = build_optimizer(model.trainable_named_parameters(), TrainConfig(lr=1e-4, weight_decay=0.05))
        variants[name] = (optimizer, guard(model, optimizer) if guard else None)
    rng = random.Random(0)
    scenarios = {"random subnets": [random_subnet(space, depth, rng) for _ in range(args.steps)],
                 "largest subnet": [Subnet.largest(space, depth)] * args.steps}
    print(f"{args.backbone}: {len(named)} PEFT tensors, {sum(p.numel() for _, p in named):,} PEFT parameters; "
          f"{args.blocks} blocks x {args.steps} steps per variant, torch threads {torch.get_num_threads()}")
    for scenario, subnets in scenarios.items():
        measure(scenario, subnets, model, variants, args.blocks)


def measure(scenario: str, subnets: list[Subnet], model: PeftViT, variants: dict, blocks: int) -> None:
    def run_block(name: str, count: OpCount | None = None) -> float:
        optimizer, guard = variants[name]
        total = 0.0
        for subnet in subnets:
            model.set_subnet(subnet)
            if guard is not None:
                with torch.enable_grad():
                    guard._record(model, ())  # what the forward pre-hook records
            started = time.perf_counter()
            if count is None:
                optimizer.step()
            else:
                with count:
                    optimizer.step()
            total += time.perf_counter() - started
        return total / len(subnets)

    counts = {}
    for name in variants:  # warm-up (AdamW state created), counting the ops of each step
        run_block(name)
        counts[name] = OpCount()
        run_block(name, counts[name])
    times: dict[str, list[float]] = {name: [] for name in variants}
    order = list(variants)
    for b in range(blocks):
        for name in order[b % 3:] + order[:b % 3]:
            times[name].append(run_block(name))
    ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    n = len(subnets)
    print(f"\n{scenario}")
    print(f"{'variant':<10} {'ms/step':>9} {'guard ms':>9} {'guard ops/step':>15} {'guard syncs':>11}")
    for name, value in ms.items():
        ops = (counts[name].ops - counts["no guard"].ops) / n
        syncs = (counts[name].syncs - counts["no guard"].syncs) / n
        print(f"{name:<10} {value:9.2f} {value - ms['no guard']:9.2f} {ops:15.1f} {syncs:11.1f}")
    print(f"step before/after {ms['before'] / ms['after']:.2f}x; guard cost before/after "
          f"{(ms['before'] - ms['no guard']) / max(ms['after'] - ms['no guard'], 1e-9):.2f}x")

if __name__ == "__main__":
    main()
