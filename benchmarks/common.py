"""What the benchmark scripts share: the machine description, interleaved timing, the models
they compare, and a trained demo run (pretrained backbone, supernet, search) to measure on.

Every script times its variants *interleaved* (in each repeat every variant runs once, in a
rotating order), so drift and background load on a shared machine hit all of them alike, and
reports the median over repeats of the per-repeat ratio.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import timm
import torch

from unitune.supernet import SearchSpace

# A tiny ViT for quick runs (as in the foundation's tests) and the ViT-B/16 of the literature.
TINY = ("vit_tiny_patch16_224", dict(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4))
VIT_B = "vit_base_patch16_224"
# NOAH's space {1, 5, 10} for LoRA / Adapter / VPT, SSF on/off per block and globally.
NOAH_SPACE = SearchSpace(lora=(0, 1, 5, 10), adapter=(0, 1, 5, 10), vpt=(0, 1, 5, 10), ssf=(0, 1), ssf_global=(0, 1))

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "demo.yaml"


def add_common_args(ap, backbone: bool = True) -> None:
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--quick", action="store_true", help="fewer repeats / smaller settings: seconds, not minutes")
    if backbone:
        ap.add_argument("--backbone", default="tiny",
                        help=f"'tiny' (img 32, dim 64, depth 4) or a timm ViT name such as {VIT_B} (random init)")


def build_vit(backbone: str, num_classes: int = 100, seed: int = 0) -> tuple[torch.nn.Module, str, dict]:
    """A randomly initialised timm ViT: ``(model, name, kwargs)``; 'tiny' is :data:`TINY`."""
    name, kwargs = TINY if backbone == "tiny" else (backbone, {})
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs), name, kwargs


def space_for(backbone: str) -> SearchSpace:
    """NOAH's space; on the tiny ViT (width 64) the demo's scaled-down {1, 4, 8}."""
    if backbone == "tiny":
        return SearchSpace(lora=(0, 1, 4, 8), adapter=(0, 1, 4, 8), vpt=(0, 1, 4, 8), ssf=(0, 1), ssf_global=(0, 1))
    return NOAH_SPACE


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                device: torch.device | None = None) -> dict[str, list[float]]:
    """Seconds per call of each ``fns[name]``, run in rotating order in every repeat."""
    device = device or torch.device("cpu")
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for n in names[r % len(names):] + names[: r % len(names)]:
            sync(device)
            t0 = time.perf_counter()
            fns[n]()
            sync(device)
            times[n].append(time.perf_counter() - t0)
    return times


def median_ratio(times: list[float], base: list[float]) -> float:
    """Median over repeats of the per-repeat ratio (both measured in the same repeat)."""
    return statistics.median(t / b for t, b in zip(times, base))


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def machine(device: torch.device | str = "cpu") -> str:
    """One line: CPU (or GPU) model, cores, torch version, load average now."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    device = torch.device(device)
    gpu = f", GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    load = ", load avg %.2f %.2f %.2f" % os.getloadavg() if hasattr(os, "getloadavg") else ""
    return (f"{cpu} ({os.cpu_count()} cores){gpu}, torch {torch.__version__}, timm {timm.__version__}, "
            f"torch threads {torch.get_num_threads()}{load}")


def setup(args) -> torch.device:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"machine: {machine(device)}")
    return device


# ---- the trained demo run -------------------------------------------------------------------


def demo_overrides(quick: bool) -> list[str]:
    """Config overrides of the demo for benchmarks: none, or shorter training with ``--quick``."""
    if quick:
        return ["pretrain.epochs=8", "supernet.epochs=8", "retrain.epochs=10", "device=cpu"]
    return ["device=cpu"]


def demo_run(out: str | Path, overrides: list[str], progress: bool = False):
    """The demo config with ``overrides``, its backbone pretrained and its supernet trained into
    ``out`` (each skipped when already there): ``(run_config, out)``."""
    from unitune.engine.config import load_run_config
    from unitune.engine.context import RunLayout
    from unitune.engine.pretrain import pretrain
    from unitune.engine.supernet_train import train_supernet

    out = Path(out)
    layout = RunLayout(out)
    run = load_run_config(DEMO_CONFIG, overrides)
    started = time.perf_counter()
    if not layout.pretrain_weights.is_file():
        pretrain(run, out, progress=progress)
    if not layout.supernet.is_file():
        train_supernet(run, out, resume=layout.supernet_state.exists(), progress=progress)
    took = time.perf_counter() - started
    if took > 1:
        print(f"demo run prepared in {out} ({took:.0f} s)")
    return run, out


def demo_search(run, out: str | Path, progress: bool = False) -> Path:
    """The demo's search (its config's budget, trials and sampler) on the trained supernet in
    ``out``: ``out/best_subnet.yaml``, run once and reused."""
    from unitune.search.stage import search_stage

    path = Path(out) / "best_subnet.yaml"
    if not path.is_file():
        search_stage(run, out, progress=progress)
    return path


def random_supernet_run(backbone: str, out: str | Path, images: int, batch: int, device: str = "cpu"):
    """A run whose supernet file holds *untrained* (random, non-zero) PEFT weights on a randomly
    initialised ``backbone``, with ``images`` synthetic validation images: for timing the search's
    fitness on backbones that cannot be trained here (ViT-B/16 on a CPU). ``(run_config, out)``."""
    import json

    from unitune.engine.config import load_run_config
    from unitune.data import build_dataset, resolve_data_config
    from unitune.io import write_yaml_atomic
    from unitune.supernet.store import save_supernet
    from unitune.engine.context import SUPERNET_FILE
    from unitune.engine.supernet_train import build_model

    out = Path(out)
    name, kwargs = TINY if backbone == "tiny" else (backbone, {})
    space = space_for(backbone).to_dict()
    classes = 10
    probe, _, _ = build_vit(backbone, num_classes=classes)
    img = probe.patch_embed.img_size[0]
    cfg = {
        "name": f"bench-{backbone}", "device": device,
        "model": {"backbone": name, "kwargs": kwargs},
        "data": {"source": "synthetic", "num_classes": classes, "image_size": img, "num_workers": 0,
                 "samples_per_class": max(1, images // classes), "batch_size": batch},
        "space": space,
        # No re-rank: it trains subnets stand-alone (on ViT-B, minutes), which is not the search's
        # fitness these runs time; the 2026-11-26 GPU check's search section overran its limit on it.
        "search": {"budget": "0.5%", "rerank": {"top_k": 0}},
    }
    write_yaml_atomic(out / "config.yaml", cfg)
    run = load_run_config(out / "config.yaml")
    if not (out / SUPERNET_FILE).is_file():
        torch.manual_seed(0)
        model = build_model(run, classes, torch.device("cpu"))
        with torch.no_grad():
            for _, p in model.peft_named_parameters():
                p.add_(torch.randn_like(p) * 0.02)
        train_set = build_dataset(run.data, "train", None)
        meta = {"backbone": name, "model": run.section("model"), "num_classes": classes,
                "classes": list(train_set.classes), "data_config": json.loads(json.dumps(resolve_data_config(model.vit))),
                "data": run.section("data"), "supernet": {}, "epochs_trained": 0}
        save_supernet(out / SUPERNET_FILE, model, meta)
    return run, out


def default_workdir() -> Path:
    """Where trained demo runs are cached between benchmark scripts."""
    import tempfile

    return Path(os.environ.get("UNITUNE_BENCH_DIR", Path(tempfile.gettempdir()) / "unitune-bench"))
