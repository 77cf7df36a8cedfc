"""Train the weight-sharing supernet: every step trains the subnet(s) the sampler draws.

Outputs in the run folder: ``supernet.safetensors`` (the trained PEFT weights at their largest
sizes, the head, and the metadata to rebuild the model), ``supernet_ckpt/`` (resume state) and
``supernet_log.jsonl`` (one line per epoch: loss, val accuracy of the largest and the smallest
subnet, throughput, peak memory). A killed run continues exactly where its last checkpoint
left it: the data order, augmentation, subnet draws and optimiser all resume bit for bit.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from unitune.engine.context import PRETRAIN_DIR, PRETRAIN_WEIGHTS, RunContext
from unitune.data import build_dataset, build_loader, build_transform, resolve_data_config
from unitune.engine.backbone import create_backbone
from unitune.engine.config import RunConfig
from unitune.engine.pretrain import pretrained_weights
from unitune.errors import UniTuneError
from unitune.progress import StageProgress
from unitune.stagelog import StageLog
from unitune.engine.train import (
    Criterion, Dist, base_lr, StepChecks, all_reduce_gradients, autocast, build_scheduler,
    clip_gradients, evaluate, init_distributed, load_checkpoint, peak_memory_mb,
    refuse_unasked_resume, rng_state, save_checkpoint, seed_everything, set_rng_state,
)

from unitune.supernet.methods.vit import check_vit
from unitune.supernet.model import PeftViT
from unitune.supernet.sampler import SubnetSampler
from unitune.supernet.store import save_supernet
from unitune.supernet.subnet import Subnet
from unitune.supernet.wrap import make_optimizer, wrap_vit



def build_backbone(run: RunConfig | RunContext, num_classes: int, weights: str | None = None,
                   weights_label: str | None = None):
    """The run's timm ViT: hub weights, a local file, or the pretrain stage's (``weights``);
    ``weights_label`` names where the file came from in an error (``--backbone``)."""
    ctx = run if isinstance(run, RunContext) else None
    run = ctx.run if ctx is not None else run
    m = run.model
    # A pretrain stage's own output (this run's, or the one `unitune compare` shares among its tasks
    # as their model.weights) is named as such: its head, the source task's, is no news to anyone.
    own = weights is not None and Path(weights).parts[-2:] == (PRETRAIN_DIR, PRETRAIN_WEIGHTS)
    label = weights_label or ("model.weights" if run.pretrain is None and not own else "pretrained backbone")
    return create_backbone(m.backbone, num_classes, pretrained=m.pretrained and not weights, weights=weights,
                           kwargs=m.kwargs, weights_label=label, shapes=ctx.shapes if ctx is not None else None)


def build_model(run: RunConfig | RunContext, num_classes: int, device: torch.device, weights: str | None = None,
                weights_label: str | None = None) -> PeftViT:
    """The supernet around the run's backbone (every layer at the space's largest size). ``run``:
    a config, or the command's :class:`~unitune.engine.context.RunContext` (its space and shapes kept)."""
    ctx = run if isinstance(run, RunContext) else RunContext(run, ".")
    space = ctx.space
    # The backbone's fate, SSF included, on a shapes-only build: before any weight is read.
    m = ctx.run.model
    shapes = ctx.shapes
    check_vit(shapes, f"backbone {m.backbone!r}", sizes=Subnet.largest(space, len(shapes.blocks)))
    return wrap_vit(build_backbone(ctx, num_classes, weights, weights_label), space).to(device)


def resolved_budget(run: RunConfig | RunContext, model: PeftViT | None = None) -> int | None:
    """The budget of the supernet's ``budget`` sampler: ``supernet.budget``, else ``search.budget``.
    (``model``: no longer read; the frozen count is the context's.)"""
    ctx = run if isinstance(run, RunContext) else RunContext(run, ".")
    run = ctx.run
    value = run.supernet.budget if run.supernet.budget is not None else run.search.budget
    if value is None:
        return None
    return ctx.budget(value, f"{run.source}: supernet.budget")


# Settings that do not change what is trained: a resumed run may differ in them (another
# machine, other worker count, another checkpoint interval) and still continue exactly.
RESUMABLE_CHANGES = {"data": ("num_workers", "check_images", "where"), "supernet": ("log_every", "checkpoint_every")}


def _fingerprint(run: RunConfig) -> dict[str, Any]:
    """What must not change between a checkpoint and its resumption."""
    out = {}
    for name in ("model", "data", "space", "supernet"):
        section = run.section(name)
        out[name] = {k: v for k, v in section.items() if k not in RESUMABLE_CHANGES.get(name, ())}
    return out


def changed_keys(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ, with both values: ``supernet.lr: 0.01 -> 0.02``."""
    changed = []
    for name in sorted(set(saved) | set(now)):
        a, b = saved.get(name, {}), now.get(name, {})
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                changed.append(f"{name}.{key}: {a.get(key)!r} -> {b.get(key)!r}")
    return changed


def distributed_evaluate(model, loader, device, num_classes, amp, world: Dist) -> dict[str, Any]:
    result = evaluate(model, loader, device, num_classes, amp)
    if world.enabled:  # each rank saw a disjoint shard: add the confusion matrices up
        confusion = result["confusion"].to(device)
        loss = torch.tensor([result["loss"] * result["n"]], device=device)
        dist.all_reduce(confusion)
        dist.all_reduce(loss)
        n = int(confusion.sum())
        result = {"accuracy": int(confusion.diag().sum()) / n, "loss": float(loss) / n, "n": n,
                  "confusion": confusion.cpu()}
    return result


def train_supernet(run: RunConfig | RunContext, out: str | Path | None = None, resume: bool = False,
                   progress: bool = True) -> Path:
    """Train the supernet of ``run`` into ``out``; returns the path of ``supernet.safetensors``."""
    ctx = RunContext.of(run, out)
    run, out, cfg = ctx.run, ctx.out, ctx.run.supernet
    device = ctx.device
    world = init_distributed(device)
    if world.enabled and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
    ckpt_dir = ctx.layout.supernet_ckpt
    refuse_unasked_resume(ckpt_dir, resume)
    seed_everything(cfg.seed)

    # The train set is indexed once (no image is decoded here): its class count sizes the head,
    # and its transform, which depends on the model, is set once the model exists.
    train_set = build_dataset(run.data, "train", None)
    val_set = build_dataset(run.data, "val", None)
    model = build_model(ctx, train_set.num_classes, device, pretrained_weights(run, out))
    data_config = resolve_data_config(model.vit)
    train_set.transform = build_transform(data_config, train=True, cfg=run.data)
    val_set.transform = build_transform(data_config, train=False, cfg=run.data)
    num_classes = train_set.num_classes

    dims = ctx.dims_for(num_classes)
    sampler = SubnetSampler(model.space, dims, cfg.sampler, seed=cfg.seed, budget=resolved_budget(ctx),
                            num_random=cfg.num_random)
    named_params = list(model.trainable_named_parameters())
    params = [p for _, p in named_params]
    # The API's optimizer, its inactive-slice guard attached: each step updates the union of the
    # subnets it ran (all of a sandwich's, not just the last one set) and leaves every other
    # entry, and its AdamW moments, exactly as they were.
    optimizer = make_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay, lr_mult=cfg.lr_mult)
    loader = build_loader(train_set, run.data, train=True, seed=cfg.seed, rank=world.rank, world_size=world.world_size,
                          device=device)
    val_loader = build_loader(val_set, run.data, train=False, seed=cfg.seed, rank=world.rank,
                              world_size=world.world_size, device=device)
    steps = loader.sampler.num_batches
    scheduler = build_scheduler(optimizer, cfg, steps)
    criterion = Criterion(cfg, num_classes)

    start_epoch, start_step = 0, 0
    loaded = load_checkpoint(ckpt_dir) if resume else None
    if loaded is not None:
        weights, state = loaded
        changed = changed_keys(state["fingerprint"], _fingerprint(run))
        if changed:
            more = f" (and {len(changed) - 3} more)" if len(changed) > 3 else ""
            raise UniTuneError(f"{ckpt_dir}: the config changed since this checkpoint ({'; '.join(changed[:3])}{more}); "
                               f"resume with the same config, or remove the folder to start over")
        model.load_trainable_state_dict({k: v.to(device) for k, v in weights.items()}, source=str(ckpt_dir))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        sampler.load_state_dict(state["sampler"])
        set_rng_state(state["rng"])
        start_epoch, start_step = state["epoch"], state["step"]
        resumed_loss = state.get("loss_sum", 0.0), state.get("n_loss", 0)
    log = StageLog(ctx.layout.supernet_log, "supernet", out, run.logging,
                   resume_epoch=start_epoch if loaded is not None else None) if world.is_main else None

    def rank_mean(value: float) -> float:
        """The mean over ranks of a per-rank number (each rank's loss is over its share of the batch)."""
        if not world.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return float(t) / world.world_size

    def checkpoint(epoch: int, step: int, loss_sum: float = 0.0, n_loss: int = 0) -> None:
        loss_sum = rank_mean(loss_sum)  # every rank resumes from the mean, so the epoch's mean stays exact
        if world.is_main:
            # The epoch's running loss goes along, so a resumed epoch logs the loss of all its steps.
            state = {"epoch": epoch, "step": step, "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "sampler": sampler.state_dict(), "rng": rng_state(),
                     "fingerprint": _fingerprint(run), "loss_sum": loss_sum, "n_loss": n_loss}
            save_checkpoint(ckpt_dir, model.trainable_state_dict(), state)
        if world.enabled:
            dist.barrier()

    largest, smallest = Subnet.largest(model.space, dims.depth), Subnet.smallest(model.space, dims.depth)
    global_step = start_epoch * steps + start_step
    per_epoch = loader.sampler.num_rank_items * world.world_size
    bar = StageProgress("supernet", cfg.epochs, per_epoch, enabled=progress and world.is_main, start_epoch=start_epoch,
                        start_images=min(per_epoch, start_step * loader.sampler.batch_size * world.world_size),
                        metric="val_acc_largest")
    for epoch in range(start_epoch, cfg.epochs):
        first = start_step if epoch == start_epoch else 0
        loader.sampler.set_epoch(epoch, first)
        model.train()
        started, seen = time.perf_counter(), 0
        checks = StepChecks(named_params, cfg.log_every)  # losses read every log_every steps, not each
        if loaded is not None and epoch == start_epoch:
            checks.loss_sum, checks.count = resumed_loss
        for step, (images, labels) in enumerate(loader, start=first):
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            images, target = criterion.prepare(images, labels)
            optimizer.zero_grad(set_to_none=True)
            for subnet in sampler():  # sandwich: the losses of its subnets add up into one update
                model.set_subnet(subnet)
                with autocast(device, cfg.amp):
                    loss = criterion(model(images).float(), target)
                loss.backward()
                checks.add(loss, f"supernet epoch {epoch + 1} step {step + 1}")
            all_reduce_gradients(params, world)
            clip_gradients(params, cfg.grad_clip)
            optimizer.step()
            global_step += 1
            scheduler.step_update(global_step)
            read = checks.step_done()
            seen += images.shape[0] * world.world_size
            bar.step(images.shape[0] * world.world_size, checks.mean_loss if read else None)
            if cfg.checkpoint_every and global_step % cfg.checkpoint_every == 0 and step + 1 < steps:
                checks.flush()  # nothing non-finite reaches a checkpoint
                checkpoint(epoch, step + 1, checks.loss_sum, checks.count)
        checks.flush()
        seconds = time.perf_counter() - started
        loss = rank_mean(checks.loss_sum) / max(checks.count, 1)
        record: dict[str, Any] = {"epoch": epoch, "step": global_step, "loss": loss,
                                  "lr": base_lr(optimizer)}
        for name, subnet in (("largest", largest), ("smallest", smallest)):
            model.set_subnet(subnet)
            record[f"val_acc_{name}"] = distributed_evaluate(model, val_loader, device, num_classes, cfg.amp,
                                                             world)["accuracy"]
        record.update(images_per_s=seen / max(seconds, 1e-9), seconds=seconds, peak_mem_mb=peak_memory_mb(device))
        if log is not None:
            log.write(record)
        bar.epoch_end(epoch, loss=record["loss"], val_acc_largest=record["val_acc_largest"],
                      val_acc_smallest=record["val_acc_smallest"], lr=record["lr"])
        checkpoint(epoch + 1, 0)
    bar.close()
    if log is not None:
        log.close()

    path = ctx.layout.supernet
    if world.is_main:
        model.set_subnet(largest)
        meta = {"backbone": run.model.backbone, "model": run.section("model"), "num_classes": num_classes,
                "classes": list(train_set.classes), "data_config": data_config, "data": run.section("data"),
                "supernet": dataclasses.asdict(cfg), "epochs_trained": cfg.epochs}
        save_supernet(path, model, meta)
    if world.enabled:
        dist.barrier()
    return path
