"""Inference latency of exported models against the plain timm backbone.

    python benchmarks/bench_inference.py                 # ViT-B/16, random init, batch 8, CPU
    python benchmarks/bench_inference.py --tiny          # a tiny ViT, seconds
    python benchmarks/bench_inference.py --device cuda

Each PEFT model is trained-looking (random non-zero PEFT weights), exported with
``export_model`` and loaded back with ``load_model``, so what is timed is what a user deploys:

- ``lora+ssf``: LoRA r=8 on qkv and SSF in every block plus global SSF, all merged: a plain timm
  ViT, expected to cost the same as the backbone (target ratio <= 1.02);
- ``adapter``: sequential adapters of width 8 in every block (kept as modules);
- ``vpt``: 10 VPT-deep prompts in every block (kept as modules).

Timing: the models run interleaved in each repeat (rotating order), so drift and background
load hit all of them alike; the ratio is the median over repeats of model time / backbone time
within the same repeat.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import timm
import torch

from unitune.retrain.export import export_model, load_model
from unitune.supernet import BackboneDims, PeftViT, SearchSpace, Subnet, count_params

TINY = dict(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4)


def build_backbone(name: str, kwargs: dict, num_classes: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs).eval()


@torch.no_grad()
def peft_model(backbone: torch.nn.Module, space: SearchSpace, subnet: Subnet) -> PeftViT:
    """A PEFT model on a copy of ``backbone`` with random non-zero PEFT weights (as after training)."""
    model = PeftViT(copy.deepcopy(backbone), space, sizes=subnet)
    g = torch.Generator().manual_seed(1)
    for _, p in model.peft_named_parameters():
        p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return model.eval()


def structure(model: torch.nn.Module) -> list[tuple]:
    """Every module's name, type and own parameter shapes: equal structures do equal compute."""
    return [
        (name, type(m), [(n, tuple(p.shape)) for n, p in m.named_parameters(recurse=False)])
        for name, m in model.named_modules()
    ]


def time_models(models: dict[str, torch.nn.Module], x: torch.Tensor, repeats: int, warmup: int) -> dict[str, list[float]]:
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    names = list(models)
    times: dict[str, list[float]] = {n: [] for n in names}
    with torch.inference_mode():
        for _ in range(warmup):
            for n in names:
                models[n](x)
        for r in range(repeats):
            order = names[r % len(names):] + names[: r % len(names)]
            for n in order:
                sync()
                t0 = time.perf_counter()
                models[n](x)
                sync()
                times[n].append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vit_base_patch16_224")
    ap.add_argument("--tiny", action="store_true", help="a tiny ViT (img 32, dim 64, depth 4) for a quick run")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--num-classes", type=int, default=100)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    name, kwargs = (("vit_tiny_patch16_224", TINY) if args.tiny else (args.model, {}))
    repeats = args.repeats * (5 if args.tiny else 1)
    backbone = build_backbone(name, kwargs, args.num_classes)
    depth = len(backbone.blocks)
    dims = BackboneDims.from_model(backbone)
    configs = {
        "lora+ssf": (SearchSpace(lora=(0, 8)), Subnet.uniform(depth, lora=8, ssf=1, ssf_global=1)),
        "adapter": (SearchSpace(adapter=(0, 8)), Subnet.uniform(depth, adapter=8)),
        "vpt": (SearchSpace(vpt=(0, 10)), Subnet.uniform(depth, vpt=10)),
    }
    size = backbone.patch_embed.img_size
    x = torch.randn(args.batch, 3, *size, generator=torch.Generator().manual_seed(2))

    models: dict[str, torch.nn.Module] = {"timm backbone": backbone}
    info: dict[str, tuple[int, int, float]] = {"timm backbone": (0, 0, 0.0)}
    with tempfile.TemporaryDirectory() as tmp:
        for label, (space, subnet) in configs.items():
            model = peft_model(backbone, space, subnet)
            manifest = export_model(Path(tmp) / label, model, name, model_kwargs=kwargs)
            loaded = load_model(Path(tmp) / label)
            with torch.no_grad():
                err = (loaded(x[:2]) - model(x[:2])).abs().max().item()
            trained = count_params(subnet, dims, space).total
            models[label] = loaded
            info[label] = (trained, manifest["params"]["unmerged_peft"], err)
            print(f"exported {label}: plain_timm={manifest['plain_timm']}, max |export - unmerged| logit = {err:.2e}")
            del model

    print(f"built and exported in {time.perf_counter() - start:.0f} s")
    device = torch.device(args.device)
    x = x.to(device)
    for m in models.values():
        m.to(device)
    times = time_models(models, x, repeats, args.warmup)
    base = times["timm backbone"]

    print(
        f"\n{name}{' (tiny)' if args.tiny else ''}, batch {args.batch}, {args.device}, torch threads "
        f"{torch.get_num_threads()}, {repeats} interleaved repeats after {args.warmup} warm-up"
    )
    # Median of per-repeat ratios (the figure to quote) and ratio of the fastest runs (least
    # disturbed by other processes on a shared machine).
    print(f"{'model':<14} {'PEFT params':>12} {'kept unmerged':>14} {'median ms':>10} {'ratio':>7} {'min ratio':>9}")
    for label, ts in times.items():
        trained, kept, _ = info[label]
        ratio = statistics.median(t / b for t, b in zip(ts, base))
        print(
            f"{label:<14} {trained:>12,} {kept:>14,} {1000 * statistics.median(ts):>10.1f} {ratio:>7.3f} "
            f"{min(ts) / min(base):>9.3f}"
        )
    # The timing is only as good as the machine is quiet; the structure is exact: the merged
    # export has the backbone's modules and parameter shapes, so its compute is the backbone's.
    print(f"\nmerged LoRA+SSF export has the backbone's modules and weight shapes: {structure(backbone) == structure(models['lora+ssf'])}")
    merged_ratio = statistics.median(t / b for t, b in zip(times["lora+ssf"], base))
    verdict = "meets" if merged_ratio <= 1.02 else "misses"
    print(f"merged LoRA+SSF / backbone = {merged_ratio:.3f} ({verdict} the <= 1.02 target)")


if __name__ == "__main__":
    main()
