"""Carry the DINOv2 ViT-S/14 weights to the GPU machine within the device tool's 64 MiB.

The fp32 file (`unitune fetch-weights dinov2_vits14`) is 88 MB and does not compress (gzip -1:
82 MB). ``pack`` writes an fp16 copy (44 MB) here; ``unpack`` writes it back as fp32 there. The
GPU run's backbone is therefore DINOv2 with every weight rounded to fp16 (relative error <= 2^-11
per weight; the largest feature difference is printed by ``unpack --check`` where the fp32 file
is at hand): the same backbone for every row of that run, not bit-identical to the CPU suite's.

    python benchmarks/gpu_weights.py pack weights/dinov2_vits14.safetensors .gpu/dinov2_vits14.fp16.safetensors
    python benchmarks/gpu_weights.py unpack .gpu/dinov2_vits14.fp16.safetensors weights/dinov2_vits14.safetensors
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def convert(src: str, dst: str, dtype: torch.dtype) -> None:
    state = load_file(src)
    out = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(dst).with_suffix(".tmp")
    save_file(out, str(tmp))
    tmp.replace(dst)
    worst = max(((v.float() - out[k].float()).abs().max().item() for k, v in state.items() if v.is_floating_point()),
                default=0.0)
    print(f"{src} -> {dst}: {len(out)} tensors as {dtype}, {Path(dst).stat().st_size / 2**20:.1f} MiB, "
          f"largest change {worst:.3g}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("how", choices=("pack", "unpack"))
    p.add_argument("src")
    p.add_argument("dst")
    args = p.parse_args()
    convert(args.src, args.dst, torch.float16 if args.how == "pack" else torch.float32)


if __name__ == "__main__":
    main()
