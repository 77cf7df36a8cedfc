"""Peak memory and step time of PEFT supernet training vs full fine-tuning of the same backbone.

    python benchmarks/bench_memory.py                                   # tiny ViT, CPU
    python benchmarks/bench_memory.py --backbone vit_base_patch16_224   # ViT-B/16, random init
    python benchmarks/bench_memory.py --quick

Both train on the same batch with AdamW (``unitune.engine.train.build_optimizer``):

- ``peft supernet``: :class:`PeftViT` with every layer at the space's largest size, the largest
  subnet active (the supernet's most expensive step), :class:`InactiveGuard` on the optimiser;
  only PEFT parameters and the head are trainable — the backbone is frozen;
- ``full fine-tuning``: the plain timm model, every parameter trainable.

Step time: both models in this process, interleaved over repeats; the median per-repeat ratio.

Peak memory: on a CPU the only honest figure is the resident set size, and it belongs to a whole
process, so each variant runs in its own fresh subprocess (variants alternating). There the model,
batch and optimiser are built, the kernel's peak-RSS counter is reset (``/proc/self/clear_refs``),
a few steps run, and the peak (``VmHWM``) is read: ``peak`` is the process's peak RSS during
training (weights included, the interpreter and libraries too), ``training`` is the peak minus the
RSS before the first step (activations kept for backward, gradients, AdamW state). On CUDA the
same subprocesses report ``torch.cuda.max_memory_allocated`` instead. (torch's profiler can also
track CPU allocations, but it attributes memory per operator, adds its own overhead, and misses
allocator caching; the RSS is what the machine must actually have.)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from common import add_common_args, build_vit, interleaved, median_ratio, setup, space_for
from unitune.engine.config import TrainConfig
from unitune.supernet import PeftViT, Subnet
from unitune.supernet.guard import InactiveGuard
from unitune.engine.train import Criterion, build_optimizer

VARIANTS = ("peft supernet", "full fine-tuning")


def build(variant: str, vit: torch.nn.Module, backbone: str, device: torch.device) -> tuple[torch.nn.Module, list]:
    """The model of ``variant`` around ``vit`` and its trainable named parameters."""
    if variant == "peft supernet":
        model = PeftViT(vit, space_for(backbone))
        model.set_subnet(Subnet.largest(model.space, model.depth))
        with torch.no_grad():  # trained-looking: B / up-projections are zero at init
            for _, p in model.peft_named_parameters():
                p.add_(torch.randn_like(p) * 0.02)
        named = list(model.trainable_named_parameters())
    else:
        model = vit
        for p in model.parameters():
            p.requires_grad_(True)
        named = list(model.named_parameters())
    return model.to(device).train(), named


def stepper(model: torch.nn.Module, named: list, x: torch.Tensor, y: torch.Tensor):
    cfg = TrainConfig(lr=1e-4)
    optimizer = build_optimizer(named, cfg)
    if isinstance(model, PeftViT):
        InactiveGuard(model, optimizer)
    criterion = Criterion(cfg, 100)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        criterion(model(x), y).backward()
        optimizer.step()

    return step


def batch(model: torch.nn.Module, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    size = (model.vit if isinstance(model, PeftViT) else model).patch_embed.img_size
    return torch.randn(n, 3, *size, generator=g).to(device), torch.randint(0, 100, (n,), generator=g).to(device)


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def child(variant: str, backbone: str, n: int, steps: int, device: torch.device) -> dict:
    """Runs in a fresh process: the peak memory of ``steps`` training steps of ``variant``."""
    vit, _, _ = build_vit(backbone)
    model, named = build(variant, vit, backbone, device)
    x, y = batch(model, n, device)
    step = stepper(model, named, x, y)
    trainable = sum(p.numel() for _, p in named)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(steps):
            step()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {"peak_mib": peak / 2**20, "training_mib": (peak - before) / 2**20, "trainable": trainable,
                "measure": "cuda max_memory_allocated"}
    before = _status_kib("VmRSS")
    try:  # reset the kernel's peak-RSS counter (VmHWM) to the current RSS (Linux >= 4.0)
        Path("/proc/self/clear_refs").write_text("5")
        measure = "VmHWM after clear_refs"
    except OSError:
        measure = "ru_maxrss (not reset: includes the build)"
    for _ in range(steps):
        step()
    peak = _status_kib("VmHWM") if measure.startswith("VmHWM") else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_mib": peak / 1024, "training_mib": (peak - before) / 1024, "trainable": trainable, "measure": measure}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap)
    ap.add_argument("--batch", type=int, default=None, help="default: 32 (tiny), 4 (ViT-B)")
    ap.add_argument("--repeats", type=int, default=None, help="timing repeats (default 30 tiny / 5 ViT-B; quick fewer)")
    ap.add_argument("--memory-runs", type=int, default=None, help="subprocesses per variant (default 2, quick 1)")
    ap.add_argument("--steps", type=int, default=3, help="training steps per memory subprocess")
    ap.add_argument("--child", choices=VARIANTS, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    tiny = args.backbone == "tiny"
    n = args.batch or (32 if tiny else 4)
    if args.child:
        if args.threads:
            torch.set_num_threads(args.threads)
        print(json.dumps(child(args.child, args.backbone, n, args.steps, torch.device(args.device))))
        return {}

    device = setup(args)
    repeats = args.repeats or ((10 if args.quick else 30) if tiny else (2 if args.quick else 5))
    runs = args.memory_runs or (1 if args.quick else 2)

    # ---- memory: one fresh process per measurement, variants alternating ----
    memory: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--backbone", args.backbone, "--batch", str(n),
           "--steps", str(args.steps), "--device", args.device]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    for r in range(runs):
        for variant in (VARIANTS if r % 2 == 0 else VARIANTS[::-1]):
            out = subprocess.run(cmd + ["--child", variant], capture_output=True, text=True, check=True,
                                 env={**os.environ, "PYTHONWARNINGS": "ignore"})
            memory[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))

    # ---- step time: both models here, interleaved ----
    vit, name, _ = build_vit(args.backbone)
    models = {v: build(v, copy.deepcopy(vit) if v == VARIANTS[0] else vit, args.backbone, device) for v in VARIANTS}
    x, y = batch(models[VARIANTS[1]][0], n, device)
    fns = {v: stepper(m, named, x, y) for v, (m, named) in models.items()}
    times = interleaved(fns, repeats, warmup=1, device=device)

    base = VARIANTS[1]
    print(f"\n{name}, batch {n}, {device}; memory: {runs} fresh process(es) per variant, {args.steps} steps each "
          f"({memory[base][0]['measure']}); time: {repeats} interleaved repeats (+1 warm-up)")
    print(f"{'variant':<17} {'trainable':>12} {'peak MiB':>9} {'training MiB':>13} {'step ms':>8} "
          f"{'peak ratio':>11} {'training ratio':>15} {'time ratio':>11}")
    results = {}
    for v in VARIANTS:
        peak = statistics.median(m["peak_mib"] for m in memory[v])
        training = statistics.median(m["training_mib"] for m in memory[v])
        peak_b = statistics.median(m["peak_mib"] for m in memory[base])
        training_b = statistics.median(m["training_mib"] for m in memory[base])
        ratio = median_ratio(times[v], times[base])
        results[v] = {"trainable": memory[v][0]["trainable"], "peak_mib": peak, "training_mib": training,
                      "step_ms": 1000 * statistics.median(times[v]), "peak_ratio": peak / peak_b,
                      "training_ratio": training / training_b, "time_ratio": ratio}
        r = results[v]
        print(f"{v:<17} {r['trainable']:>12,} {peak:>9.0f} {training:>13.0f} {r['step_ms']:>8.1f} "
              f"{r['peak_ratio']:>11.3f} {r['training_ratio']:>15.3f} {ratio:>11.3f}")
    return results


if __name__ == "__main__":
    main()
