"""The GPU path, exercised in one run (issue 13): every CUDA code path of unitune and the figures
the issue asks for, written to an output folder as ``results.json`` and ``results.md``.

    python benchmarks/gpu_check.py --out OUT                       # on a GPU: within 8 minutes on an H100
    python benchmarks/gpu_check.py --out OUT --device cpu --tiny   # the same code paths on a CPU, in a minute
    bash benchmarks/gpu_check.sh OUT                               # on the lent GPU machine (see that file)

Sections, each timed, each run even when an earlier one failed (its error is recorded and the
exit status is 1). On CUDA each section runs in its own process with its own time limit, so a
hang or a broken CUDA context costs that section only; the results files are rewritten after
every section, so a run stopped from outside keeps what was done.

- ``env``: versions, the GPU, ``device: auto`` -> CUDA, bf16 support, a one-rank NCCL all-reduce.
- ``train``: ViT-B/16 (random init) training steps at batch 64 with bf16 autocast
  (``unitune.engine.train.autocast``, as the supernet and retrain stages use it), images/s and peak GPU
  memory of (a) the supernet (NOAH's space, every layer allocated) with its largest subnet active
  and ``InactiveGuard`` on the optimiser, the same with unitune's health checks (``StepChecks``:
  the losses read and the weights checked every 25 steps), (b) that subnet materialised, (c) HF
  PEFT LoRA r=8 on qkv (if ``peft`` is installed) and unitune's LoRA r=8 on qkv, the same
  update (``qkv(x) + B A x``, alpha = r), (d) full fine-tuning. Timing: every variant runs
  blocks of steps in a rotating order (``common.interleaved``; warm-up block excluded, the GPU
  synchronised around each block); peak memory: ``torch.cuda.max_memory_allocated`` over a few
  steps of each variant alone, minus what was allocated before the variant was built.
- ``inference``: the merged LoRA r=8 + SSF export (exported from the model on the device, then
  loaded with ``load_model``) against the timm backbone, batch 64, fp32 and bf16 autocast.
- ``search``: ``search_stage`` (TPE, SQLite) with 50 trials on a random-init ViT-B supernet and
  200 synthetic validation images; trials/s.
- ``retrain_vit``: ``unitune retrain --init supernet`` (the CLI) of the searched subnet, 1 epoch,
  then ``evaluate_export`` of its export on the device.
- ``demo``: ``unitune run --config configs/demo.yaml device=cuda`` end to end.
- ``retrain_demo``: ``unitune retrain --init supernet`` on the demo's trained supernet.

Nothing is downloaded: the ViT-B is randomly initialised, its images synthetic, the demo's
digits ship with scikit-learn.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:  # run as a script or imported from the tests
    sys.path.insert(0, str(BENCH))

import torch  # noqa: E402

from common import DEMO_CONFIG, TINY, VIT_B, interleaved, machine, median_ratio, space_for  # noqa: E402

SECTIONS = ("env", "train", "inference", "search", "retrain_vit", "demo", "retrain_demo")
# Seconds a section may take on the GPU (each also stops at the run's overall deadline).
LIMITS = {"env": 45, "train": 180, "inference": 90, "search": 120, "retrain_vit": 120, "demo": 240,
          "retrain_demo": 120}
TARGETS = {"supernet_over_static": 1.10, "unitune_lora_over_peft_img_s": 0.90, "merged_over_backbone": 1.02}
NUM_CLASSES = 100
# The demo shortened for a dry run (warm-up epochs must not exceed the epochs).
QUICK_DEMO = ["pretrain.epochs=1", "pretrain.warmup_epochs=0", "supernet.epochs=1", "supernet.warmup_epochs=0",
              "search.trials=2", "retrain.epochs=1", "retrain.warmup_epochs=0"]
RESULTS_JSON, RESULTS_MD = "results.json", "results.md"


# ---- settings -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output folder: results.json, results.md")
    ap.add_argument("--workdir", default=None, help="run folders of the demo, search and retrain (default: OUT/runs)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    ap.add_argument("--tiny", action="store_true",
                    help="tiny sizes for a CPU dry run: the tiny ViT, few steps, trials and epochs")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--budget-s", type=float, default=450.0,
                    help="the whole run's deadline in seconds; a section that cannot start before it is skipped")
    ap.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                    help="each section in its own process with a time limit (default: on CUDA only)")
    ap.add_argument("--batch", type=int, default=None, help="training and inference batch (default 64; tiny 8)")
    ap.add_argument("--steps", type=int, default=None,
                    help="timed training steps per variant (default 300; tiny 4), after one warm-up block")
    ap.add_argument("--blocks", type=int, default=None, help="interleaved blocks the steps are split into (default 12)")
    ap.add_argument("--trials", type=int, default=None, help="search trials (default 50; tiny 4)")
    ap.add_argument("--val-images", type=int, default=None, help="search validation images (default 200; tiny 20)")
    ap.add_argument("--demo-quick", action=argparse.BooleanOptionalAction, default=None,
                    help="shortened demo epochs and trials (default: on the CPU and with --tiny)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--section", default=None, help=argparse.SUPPRESS)  # a child process runs this one section
    args = ap.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        ap.error(f"--sections: unknown {unknown}; expected names from {list(SECTIONS)}")
    tiny = args.tiny
    args.backbone = "tiny" if tiny else VIT_B
    args.batch = args.batch or (8 if tiny else 64)
    args.steps = args.steps or (4 if tiny else 300)
    args.blocks = min(args.blocks or (2 if tiny else 12), args.steps)
    args.trials = args.trials or (4 if tiny else 50)
    args.val_images = args.val_images or (20 if tiny else 200)
    if args.demo_quick is None:
        args.demo_quick = tiny or args.device == "cpu"
    if args.isolate is None:
        args.isolate = args.device.startswith("cuda")
    args.out = Path(args.out).resolve()
    args.workdir = Path(args.workdir).resolve() if args.workdir else args.out / "runs"
    return args


# ---- small helpers -------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> int:
    """Allocated bytes now, after resetting the peak counter (0 on the CPU)."""
    if device.type != "cuda":
        return 0
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def peak_since(device: torch.device, before: int) -> float | None:
    """Peak allocated MiB above ``before`` since :func:`reset_peak` (None on the CPU: no allocator
    statistics; bench_memory.py measures the CPU's resident set in separate processes)."""
    if device.type != "cuda":
        return None
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def on_device(model: torch.nn.Module, device: torch.device) -> bool:
    return all(t.device.type == device.type for t in [*model.parameters(), *model.buffers()])


def fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def cli(*argv: str) -> None:
    """``unitune ARGV`` through the CLI's own entry point; ``--debug`` so that a user error
    raises with its message instead of only returning 2."""
    from unitune.commands.cli import main

    rc = main(["--debug", *argv])
    if rc:
        raise RuntimeError(f"unitune {' '.join(argv[:1])} exited with status {rc}")


def random_vit(backbone: str, seed: int = 0) -> torch.nn.Module:
    from common import build_vit

    return build_vit(backbone, num_classes=NUM_CLASSES, seed=seed)[0]


# ---- env -------------------------------------------------------------------------------------------


def section_env(args, device: torch.device) -> dict:
    import optuna
    import timm

    from unitune.engine.train import pick_device

    figures: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
        "optuna": optuna.__version__, "cuda_available": torch.cuda.is_available(),
        "torch_cuda_build": torch.version.cuda, "device_auto": str(pick_device("auto")),
        "machine": machine(device),
    }
    try:
        import peft

        figures["peft"] = peft.__version__
    except ImportError as e:
        figures["peft"] = None
        figures["peft_skip_reason"] = f"peft not installed ({e})"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        figures.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                       capability=f"{props.major}.{props.minor}", bf16_supported=torch.cuda.is_bf16_supported(),
                       matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
                       cudnn_allow_tf32=torch.backends.cudnn.allow_tf32)
    # One rank through the backend torchrun would use (NCCL on CUDA, gloo on the CPU): a 2-rank
    # NCCL run needs 2 GPUs (NCCL refuses two ranks on one device), so this is what one GPU allows.
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")  # one rank: its bootstrap needs no other interface
    figures["distributed_backend"] = backend
    figures[f"{backend}_available"] = dist.is_nccl_available() if backend == "nccl" else dist.is_gloo_available()
    with tempfile.TemporaryDirectory() as tmp:
        store = dist.FileStore(str(Path(tmp) / "store"), 1)
        kwargs = {"device_id": torch.device("cuda", torch.cuda.current_device())} if device.type == "cuda" else {}
        dist.init_process_group(backend, store=store, rank=0, world_size=1, **kwargs)
        try:
            t = torch.arange(4.0, device=device)
            dist.all_reduce(t)
            sync(device)
            figures[f"{backend}_one_rank_all_reduce"] = t.tolist() == [0.0, 1.0, 2.0, 3.0]
        finally:
            dist.destroy_process_group()
    return figures


# ---- train -----------------------------------------------------------------------------------------


def make_step(model, named, x, y, device, subnet=None, guard=False, checks=False,
              per_step_syncs=False) -> Callable[[], None]:
    """One training step as unitune takes it: bf16 autocast (on CUDA), float32 loss, AdamW.
    ``checks`` adds what the supernet loop does beside the arithmetic: ``clip_gradients`` and
    ``StepChecks`` (the losses read, and the weights checked, every ``CHECK_EVERY`` steps).
    ``per_step_syncs`` does those checks as the loop did before StepChecks, for the comparison:
    the loss's finiteness read before the backward pass, ``loss.item()``, every weight's
    finiteness read after the update (three host-device synchronisations a step)."""
    from unitune.engine.config import TrainConfig
    from unitune.supernet.guard import InactiveGuard
    from unitune.engine.train import Criterion, StepChecks, autocast, build_optimizer, clip_gradients

    cfg = TrainConfig(lr=1e-4)
    optimizer = build_optimizer(named, cfg)
    if guard:
        InactiveGuard(model, optimizer)
    criterion = Criterion(cfg, NUM_CLASSES)
    params = [p for _, p in named]
    health = StepChecks(named)
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        if subnet is not None:
            model.set_subnet(subnet)
        with autocast(device, cfg.amp):
            loss = criterion(model(x).float(), y)
        if per_step_syncs:
            bool(torch.isfinite(loss.detach()))
        loss.backward()
        if checks:
            health.add(loss, "gpu_check")
        if checks or per_step_syncs:
            clip_gradients(params, cfg.grad_clip)
        if per_step_syncs:
            loss.item()
        optimizer.step()
        if checks:
            health.step_done()
        if per_step_syncs:
            bool(torch.stack([p.detach().isfinite().all() for p in params]).all())

    return step


def peft_lora(vit: torch.nn.Module, rank: int, scale: float):
    """HF PEFT's LoRA on every block's fused qkv with unitune's update (alpha = scale * r, so
    alpha / r = unitune's fixed scale), the head trainable as in unitune; ``None`` plus the
    reason when peft is missing."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:
        return None, f"peft is not installed ({e}); pip install peft"
    alpha = scale * rank
    alpha = int(alpha) if float(alpha).is_integer() else alpha
    model = get_peft_model(vit, LoraConfig(r=rank, lora_alpha=alpha, target_modules=["qkv"], lora_dropout=0.0,
                                           bias="none"))
    model.base_model.model.get_classifier().requires_grad_(True)
    return model, None


@torch.no_grad()
def copy_lora_into_peft(unitune_model, peft_model) -> None:
    """Give PEFT's LoRA the unitune LoRA's weights (A: r x d, B: 3d x r in both)."""
    vit = peft_model.base_model.model
    for i, block in enumerate(vit.blocks):
        layer = unitune_model.named_layers[f"blocks.{i}.lora.qkv"]
        block.attn.qkv.lora_A["default"].weight.copy_(layer.lora_A)
        block.attn.qkv.lora_B["default"].weight.copy_(layer.lora_B)
    vit.get_classifier().load_state_dict(unitune_model.head.state_dict())


def section_train(args, device: torch.device) -> dict:
    from unitune.supernet import BackboneDims, PeftViT, SearchSpace, Subnet, count_params

    backbone, batch = args.backbone, args.batch
    space = space_for(backbone)
    base = random_vit(backbone)
    dims = BackboneDims.from_model(base)
    depth = dims.depth
    g = torch.Generator().manual_seed(0)
    size = base.patch_embed.img_size
    x = torch.randn(batch, 3, *size, generator=g).to(device)
    y = torch.randint(0, NUM_CLASSES, (batch,), generator=g).to(device)
    if device.type == "cuda":  # cuBLAS / cuDNN handles and workspaces, before any variant's memory is counted
        torch.nn.functional.linear(x.flatten(1)[:, :64].bfloat16(), torch.zeros(64, 64, device=device).bfloat16())

    def trained_looking(model) -> None:  # B and the adapters' up-projections start at zero
        with torch.no_grad():
            for _, p in model.peft_named_parameters():
                p.add_(torch.randn(p.shape, generator=g).to(p.device) * 0.02)

    largest = Subnet.largest(space, depth)
    lora_space = SearchSpace(lora=(0, 8), lora_targets=("qkv",), lora_scale=space.lora_scale)
    lora_subnet = Subnet.uniform(depth, lora=8)
    variants: dict[str, dict[str, Any]] = {}
    steps: dict[str, Callable[[], None]] = {}
    memory_steps = 3

    def add(name: str, build: Callable[[], tuple], **step_kwargs) -> Any:
        """Build a variant and measure its peak memory over a few steps, alone."""
        before = reset_peak(device)
        model, named, note = build()
        trainable = sum(p.numel() for _, p in named)
        built = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        step = make_step(model, named, x, y, device, **step_kwargs)
        for _ in range(memory_steps):
            step()
        peak = peak_since(device, before)
        steps[name] = step
        variants[name] = {"trainable": trainable, "peak_mib": peak,
                          "training_mib": None if peak is None else peak - (built - before) / 2**20, **note}
        return model

    def build_supernet():
        model = PeftViT(random_vit(backbone), space).to(device)
        trained_looking(model)
        model.set_subnet(largest)
        return model, list(model.trainable_named_parameters()), {}

    supernet = add("supernet (largest subnet)", build_supernet, subnet=largest, guard=True)
    # The same model and subnet, stepped as train_supernet does (with its checks); the memory
    # is the supernet's (same model), so none is measured for it.
    steps["supernet + unitune's per-step checks"] = make_step(
        supernet, list(supernet.trainable_named_parameters()), x, y, device, subnet=largest, guard=True, checks=True)
    variants["supernet + unitune's per-step checks"] = {
        "trainable": variants["supernet (largest subnet)"]["trainable"], "peak_mib": None, "training_mib": None,
        "note": "the supernet's model and subnet; adds clip_gradients and StepChecks (read every CHECK_EVERY steps)"}
    steps["supernet + three syncs a step (before StepChecks)"] = make_step(
        supernet, list(supernet.trainable_named_parameters()), x, y, device, subnet=largest, guard=True,
        per_step_syncs=True)
    variants["supernet + three syncs a step (before StepChecks)"] = {
        "trainable": variants["supernet (largest subnet)"]["trainable"], "peak_mib": None, "training_mib": None,
        "note": "the checks as the loop made them before StepChecks (1.32x the supernet step on an H200)"}

    def build_static():
        model = supernet.materialize(largest)
        placed = on_device(model, device)  # materialize() of a model on the device should stay there
        model = model.to(device)
        return model, list(model.trainable_named_parameters()), {"materialize_kept_device": placed}

    add("materialised (largest subnet)", build_static)

    def build_unitune_lora():
        model = PeftViT(random_vit(backbone), lora_space, sizes=lora_subnet).to(device)
        trained_looking(model)
        return model, list(model.trainable_named_parameters()), {}

    unitune_lora = add("unitune LoRA r=8 qkv", build_unitune_lora)

    peft_model, skip = peft_lora(random_vit(backbone), 8, lora_space.lora_scale)
    if peft_model is None:
        variants["HF PEFT LoRA r=8 qkv"] = {"skipped": skip}
    else:
        def build_peft():
            model = peft_model.to(device)
            copy_lora_into_peft(unitune_lora, model)
            # The same weights give the same logits: the two LoRAs compute the same function.
            model.eval(), unitune_lora.eval()
            with torch.no_grad():
                diff = (model(x[:2]) - unitune_lora(x[:2])).abs().max().item()
            unitune_lora.train()  # its step was made already; make_step sets train() on this one
            named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
            return model, named, {"max_logit_diff_vs_unitune_fp32": diff}

        add("HF PEFT LoRA r=8 qkv", build_peft)

    def build_full():
        model = random_vit(backbone).to(device)
        model.requires_grad_(True)
        return model, list(model.named_parameters()), {}

    add("full fine-tuning", build_full)

    # ---- time: blocks of steps, variants in a rotating order, the first block a warm-up ----
    per_block = max(1, args.steps // args.blocks)

    def block(step):
        def run() -> None:
            for _ in range(per_block):
                step()
        return run

    started = time.perf_counter()
    times = interleaved({n: block(s) for n, s in steps.items()}, args.blocks, warmup=1, device=device)
    timing_s = time.perf_counter() - started
    for name, ts in times.items():
        ms = 1000 * sorted(ts)[len(ts) // 2] / per_block
        variants[name].update(step_ms=ms, images_per_s=batch * 1000 / ms)

    expected_largest = count_params(largest, dims, space).with_head
    expected_lora = count_params(lora_subnet, dims, lora_space).with_head
    figures: dict[str, Any] = {
        "backbone": f"{backbone} (random init)", "batch": batch, "image_size": list(size), "classes": NUM_CLASSES,
        "amp": "bf16 autocast" if device.type == "cuda" else "fp32 (autocast is CUDA-only in unitune)",
        "space": space.to_dict(), "timed_steps_per_variant": per_block * args.blocks, "blocks": args.blocks,
        "warmup_steps": per_block, "timing_seconds": timing_s,
        "trainable_expected": {"largest subnet + head": expected_largest, "LoRA r=8 qkv + head": expected_lora},
        "variants": variants,
    }
    ratio = lambda a, b: median_ratio(times[a], times[b])  # noqa: E731
    figures["supernet_over_static"] = ratio("supernet (largest subnet)", "materialised (largest subnet)")
    figures["supernet_checks_over_supernet"] = ratio("supernet + unitune's per-step checks",
                                                     "supernet (largest subnet)")
    figures["supernet_per_step_syncs_over_supernet"] = ratio("supernet + three syncs a step (before StepChecks)",
                                                             "supernet (largest subnet)")
    if "HF PEFT LoRA r=8 qkv" in times:  # images/s ratio = inverse step-time ratio
        figures["unitune_lora_over_peft_img_s"] = ratio("HF PEFT LoRA r=8 qkv", "unitune LoRA r=8 qkv")
    else:
        figures["unitune_lora_over_peft_img_s"] = None
    if device.type == "cuda":
        figures["peak_mem_supernet_over_full"] = (variants["supernet (largest subnet)"]["peak_mib"]
                                                  / variants["full fine-tuning"]["peak_mib"])
    return figures


# ---- inference -------------------------------------------------------------------------------------


def section_inference(args, device: torch.device) -> dict:
    from bench_inference import build_backbone, peft_model, structure
    from unitune.retrain.export import export_model, load_model
    from unitune.supernet import SearchSpace, Subnet

    name, kwargs = TINY if args.tiny else (VIT_B, {})
    backbone = build_backbone(name, kwargs, NUM_CLASSES)
    depth = len(backbone.blocks)
    subnet = Subnet.uniform(depth, lora=8, ssf=1, ssf_global=1)
    model = peft_model(backbone, SearchSpace(lora=(0, 8)), subnet).to(device)
    backbone = backbone.to(device)
    figures: dict[str, Any] = {"model": f"{name} (random init), LoRA r=8 qkv + SSF every block + global SSF, merged",
                               "batch": args.batch}
    folder = fresh_dir(args.workdir / "inference") / "export"
    try:
        manifest = export_model(folder, model, name, model_kwargs=kwargs)
        figures["export_from_device_model"] = "ok"
    except Exception as e:  # noqa: BLE001 - recorded, then exported from a CPU copy so the timing still runs
        figures["export_from_device_model"] = f"{type(e).__name__}: {e}"
        manifest = export_model(folder, model.cpu(), name, model_kwargs=kwargs)
        model.to(device)
    figures["plain_timm"] = manifest["plain_timm"]
    loaded = load_model(folder).to(device).eval()
    figures["same_modules_and_shapes_as_backbone"] = structure(backbone) == structure(loaded)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(args.batch, 3, *backbone.patch_embed.img_size, generator=g).to(device)
    with torch.inference_mode():
        figures["max_logit_diff_export_vs_unmerged_fp32"] = (loaded(x[:4]) - model(x[:4])).abs().max().item()
    del model

    per_call = 2 if args.tiny else 10
    repeats = 3 if args.tiny else 20
    for mode in ("fp32", "bf16"):
        ctx = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if mode == "bf16" else contextlib.nullcontext

        def forwards(m):
            def run() -> None:
                with torch.inference_mode(), ctx():
                    for _ in range(per_call):
                        m(x)
            return run

        times = interleaved({"timm backbone": forwards(backbone), "merged export": forwards(loaded)},
                            repeats, warmup=1, device=device)
        med = {k: 1000 * sorted(v)[len(v) // 2] / per_call for k, v in times.items()}
        figures[mode] = {"backbone_ms": med["timm backbone"], "merged_ms": med["merged export"],
                         "backbone_images_per_s": args.batch * 1000 / med["timm backbone"],
                         "merged_over_backbone": median_ratio(times["merged export"], times["timm backbone"]),
                         "forwards_per_repeat": per_call, "repeats": repeats}
    return figures


# ---- search ----------------------------------------------------------------------------------------


def section_search(args, device: torch.device) -> dict:
    from common import random_supernet_run
    from unitune.search.stage import search_stage

    folder = fresh_dir(args.workdir / "search")
    started = time.perf_counter()
    run, out = random_supernet_run(args.backbone, folder, args.val_images, batch=64 if not args.tiny else 16,
                                   device=str(device))
    prepared = time.perf_counter() - started
    started = time.perf_counter()
    result, paths = search_stage(run, out, trials=args.trials, progress=False)
    stage_s = time.perf_counter() - started
    done = [t for t in result.study.trials if t.state.name == "COMPLETE"]
    span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    evals = [t.user_attrs["eval_seconds"] for t in done]
    return {
        "backbone": f"{args.backbone} (random init, random PEFT weights)", "sampler": "tpe", "storage": "sqlite",
        "trials": len(done), "val_images": result.study.user_attrs.get("val_images"),
        "budget": result.study.user_attrs.get("budget"), "trials_per_s": len(done) / span,
        "mean_eval_ms": 1000 * sum(evals) / len(evals), "trials_span_s": span,
        "stage_seconds": stage_s, "supernet_prepare_seconds": prepared,
        "best_val_accuracy": result.best_trial.user_attrs["val_accuracy"],
        "best_subnet": str(paths["best_subnet"]),
    }


# ---- retrain ---------------------------------------------------------------------------------------


def retrain_and_evaluate(config: Path, run_dir: Path, out: Path, device: torch.device, overrides: list[str],
                         copy_pretrain: bool = False) -> dict:
    """``unitune retrain --init supernet`` of ``run_dir``'s best subnet into ``out``, then its
    export evaluated on the device."""
    needed = [run_dir / "best_subnet.yaml", run_dir / "supernet.safetensors"]
    if copy_pretrain:
        needed.append(run_dir / "pretrain" / "backbone.safetensors")
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"needs the earlier section's run: missing {missing}")
    from unitune.io import read_json
    from unitune.retrain.evaluate import evaluate_export

    fresh_dir(out)
    if copy_pretrain:  # the demo's PEFT stages load the backbone its pretrain stage trained
        shutil.copytree(run_dir / "pretrain", out / "pretrain")
    started = time.perf_counter()
    cli("retrain", "--config", str(config), "--out", str(out), "--init", "supernet",
        "--subnet", str(run_dir / "best_subnet.yaml"), "--supernet", str(run_dir / "supernet.safetensors"),
        "--quiet", f"device={device}", *overrides)
    seconds = time.perf_counter() - started
    result = read_json(out / "retrain_result.json")
    manifest = read_json(out / "export" / "unitune.json")
    started = time.perf_counter()
    evaluation = evaluate_export(out / "export", None, device=str(device))
    return {"init": result["init"], "epochs": result["epochs"], "test_accuracy": result["test_accuracy"],
            "test_images": result["test_images"], "export_test_accuracy": evaluation["accuracy"],
            "export_matches_retrain": abs(evaluation["accuracy"] - result["test_accuracy"]) < 1e-9,
            "trainable_params": result["params"]["trainable_params"], "plain_timm_export": manifest.get("plain_timm"),
            "retrain_seconds": seconds, "evaluate_seconds": time.perf_counter() - started}


def section_retrain_vit(args, device: torch.device) -> dict:
    run_dir = args.workdir / "search"
    return {"run": f"{args.backbone} search run (synthetic data)",
            **retrain_and_evaluate(run_dir / "config.yaml", run_dir, args.workdir / "retrain_vit", device,
                                   ["retrain.epochs=1"])}


def section_demo(args, device: torch.device) -> dict:
    from unitune.io import read_json

    out = fresh_dir(args.workdir / "demo")
    quick = QUICK_DEMO if args.demo_quick else []
    started = time.perf_counter()
    cli("run", "--config", str(DEMO_CONFIG), "--out", str(out), "--quiet", f"device={device}", *quick)
    seconds = time.perf_counter() - started
    summary = read_json(out / "run_summary.json")
    log = [json.loads(line) for line in (out / "supernet_log.jsonl").read_text().splitlines() if line.strip()]
    return {"config": str(DEMO_CONFIG.relative_to(DEMO_CONFIG.parents[1])), "overrides": [f"device={device}", *quick],
            "wall_seconds": seconds, "stage_seconds": summary["seconds"], "search_trials": summary["search_trials"],
            "search_best_val_accuracy": summary["search_best_val_accuracy"],
            "test_accuracy": summary["test_accuracy"], "test_images": summary["test_images"],
            "trainable_params": summary["trainable_params"],
            "supernet_last_epoch_images_per_s": log[-1]["images_per_s"],
            "supernet_peak_mem_mb": log[-1]["peak_mem_mb"]}


def section_retrain_demo(args, device: torch.device) -> dict:
    epochs = [o for o in QUICK_DEMO if o.startswith("retrain.")] if args.demo_quick else []
    return {"run": "the demo run", **retrain_and_evaluate(DEMO_CONFIG, args.workdir / "demo",
                                                        args.workdir / "retrain_demo", device, epochs,
                                                        copy_pretrain=True)}


RUNNERS = {"env": section_env, "train": section_train, "inference": section_inference, "search": section_search,
           "retrain_vit": section_retrain_vit, "demo": section_demo, "retrain_demo": section_retrain_demo}


# ---- running sections --------------------------------------------------------------------------------


def run_section(name: str, args) -> dict:
    """Run one section here; never raises: an error is recorded with its message."""
    device = torch.device(args.device)
    started = time.perf_counter()
    try:
        figures = RUNNERS[name](args, device)
        record = {"status": "ok", "figures": figures}
    except Exception as e:  # noqa: BLE001 - one failing section must not cost the others
        traceback.print_exc()
        record = {"status": "error", "error": f"{type(e).__name__}: {e}".strip()[:2000]}
    record["seconds"] = round(time.perf_counter() - started, 2)
    print(f"[gpu_check] {name}: {record['status']} in {record['seconds']:.1f} s"
          + (f" -- {record['error'].splitlines()[0]}" if record["status"] == "error" else ""), flush=True)
    return record


def run_isolated(name: str, args, argv: list[str], limit: float) -> dict:
    """Run one section in a child process that must finish within ``limit`` seconds."""
    result = args.out / f".section-{name}.json"
    result.unlink(missing_ok=True)
    started = time.perf_counter()
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--section", name]
    try:
        proc = subprocess.run(cmd, timeout=limit)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        return {"status": "error", "error": f"timed out after {limit:.0f} s (the section's limit)",
                "seconds": round(time.perf_counter() - started, 2)}
    if result.is_file():
        record = json.loads(result.read_text())
        result.unlink()
        record["process_seconds"] = round(time.perf_counter() - started, 2)  # with the child's start-up
        return record
    return {"status": "error", "error": f"the section's process ended with status {rc} and no result",
            "seconds": round(time.perf_counter() - started, 2)}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.section:  # a child: one section, its record to a file
        record = run_section(args.section, args)
        from unitune.io import write_json_atomic

        write_json_atomic(args.out / f".section-{args.section}.json", record)
        return 0

    args.out.mkdir(parents=True, exist_ok=True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    started = time.perf_counter()
    deadline = started + args.budget_s
    report: dict[str, Any] = {
        "meta": {"command": "python benchmarks/gpu_check.py " + " ".join(argv), "device": args.device,
                 "mode": ("GPU run" if device.type == "cuda" and not args.tiny
                          else f"{'CPU' if device.type == 'cpu' else 'GPU'}{'/tiny' if args.tiny else ''} dry run: "
                               "not GPU figures"),
                 "machine": machine(device), "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
                 "isolated_sections": args.isolate, "budget_s": args.budget_s},
        "sections": {},
    }
    print(f"[gpu_check] {report['meta']['mode']}; {report['meta']['machine']}", flush=True)
    for name in args.sections:
        left = deadline - time.perf_counter()
        if left < 15:
            record = {"status": "skipped", "error": f"out of the run's time budget ({args.budget_s:.0f} s)",
                      "seconds": 0.0}
        elif args.isolate:
            record = run_isolated(name, args, argv, min(LIMITS[name], left))
        else:
            record = run_section(name, args)
        report["sections"][name] = record
        print(f"[gpu_check] {name} record: {json.dumps(record)[:3000]}", flush=True)  # the log keeps the figures too
        report["meta"]["total_seconds"] = round(time.perf_counter() - started, 1)
        report["targets"] = targets(report["sections"])
        write_results(args.out, report)
    failed = [n for n, r in report["sections"].items() if r["status"] != "ok"]
    print(f"[gpu_check] done in {report['meta']['total_seconds']:.0f} s; "
          f"{'all sections ok' if not failed else 'not ok: ' + ', '.join(failed)}; results in {args.out}", flush=True)
    return 1 if failed else 0


# ---- results ---------------------------------------------------------------------------------------


def targets(sections: dict) -> dict:
    """The issue's acceptance figures, where the sections that give them ran."""
    def fig(section: str, *path: str):
        node = sections.get(section, {}).get("figures")
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        return node

    def verdict(value, limit, higher_is_better=False):
        if value is None:
            return {"value": None, "target": limit, "met": None}
        return {"value": value, "target": limit, "met": value >= limit if higher_is_better else value <= limit}

    out = {
        "supernet step / static step (<= 1.10)": verdict(fig("train", "supernet_over_static"),
                                                         TARGETS["supernet_over_static"]),
        "unitune LoRA img/s / PEFT LoRA img/s (>= 0.90)": verdict(fig("train", "unitune_lora_over_peft_img_s"),
                                                                  TARGETS["unitune_lora_over_peft_img_s"], True),
        "merged export / timm backbone, fp32 (<= 1.02)": verdict(fig("inference", "fp32", "merged_over_backbone"),
                                                                 TARGETS["merged_over_backbone"]),
        "merged export / timm backbone, bf16 (<= 1.02)": verdict(fig("inference", "bf16", "merged_over_backbone"),
                                                                 TARGETS["merged_over_backbone"]),
    }
    out["peak memory, PEFT supernet / full fine-tuning"] = {"value": fig("train", "peak_mem_supernet_over_full"),
                                                            "target": None, "met": None}
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:,.4f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _rows(prefix: str, node: Any) -> list[tuple[str, str]]:
    if isinstance(node, dict):
        rows = []
        for k, v in node.items():
            rows += _rows(f"{prefix}.{k}" if prefix else str(k), v)
        return rows
    return [(prefix, _fmt(node))]


def markdown(report: dict) -> str:
    meta = report["meta"]
    lines = ["# unitune GPU check (issue 13)", "",
             f"- **{meta['mode']}**", f"- machine: {meta['machine']}", f"- command: `{meta['command']}`",
             f"- started {meta['started_utc']} UTC, {meta.get('total_seconds', 0):.0f} s in all", "",
             "## Targets", ""]
    if meta["mode"] != "GPU run":
        lines += ["(A dry run: these verdicts check the script, they say nothing about the GPU.)", ""]
    lines += ["| figure | value | target | met |", "|---|---|---|---|"]
    for name, t in report.get("targets", {}).items():
        lines.append(f"| {name} | {_fmt(t['value'])} | {_fmt(t['target'])} | {_fmt(t['met'])} |")
    lines += ["", "## Sections", "", "| section | status | seconds | error |", "|---|---|---|---|"]
    for name, r in report["sections"].items():
        lines.append(f"| {name} | {r['status']} | {r['seconds']:.1f} | {_fmt(r.get('error', ''))} |")
    train = report["sections"].get("train", {}).get("figures")
    if train:
        lines += ["", "## Training steps", "", f"{train['backbone']}, batch {train['batch']}, {train['amp']}, "
                  f"{train['timed_steps_per_variant']} timed steps per variant in {train['blocks']} interleaved blocks",
                  "", "| variant | trainable | step ms | images/s | peak MiB | training MiB | note |",
                  "|---|---|---|---|---|---|---|"]
        for name, v in train["variants"].items():
            if "skipped" in v:
                lines.append(f"| {name} | | | | | | skipped: {_fmt(v['skipped'])} |")
                continue
            note = "; ".join(_fmt(x) if k == "note" else f"{k} {_fmt(x)}" for k, x in v.items()
                             if k not in ("trainable", "step_ms", "images_per_s", "peak_mib", "training_mib"))
            lines.append(f"| {name} | {_fmt(v['trainable'])} | {_fmt(v.get('step_ms'))} "
                         f"| {_fmt(v.get('images_per_s'))} | {_fmt(v['peak_mib'])} | {_fmt(v['training_mib'])} "
                         f"| {note} |")
    for name, r in report["sections"].items():
        if r["status"] != "ok":
            continue
        lines += ["", f"## {name}", "", "| figure | value |", "|---|---|"]
        figures = {k: v for k, v in r["figures"].items() if not (name == "train" and k == "variants")}
        lines += [f"| {k} | {v} |" for k, v in _rows("", figures)]
    return "\n".join(lines) + "\n"


def write_results(out: Path, report: dict) -> None:
    from unitune.io import write_json_atomic, write_text_atomic

    write_json_atomic(out / RESULTS_JSON, report)
    write_text_atomic(out / RESULTS_MD, markdown(report))


if __name__ == "__main__":
    sys.exit(main())
