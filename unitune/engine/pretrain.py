"""Source pretraining: fully train a timm ViT on one task so PEFT can adapt it to another.

Hub weights are out of reach offline, yet a PEFT demo on a randomly initialised backbone shows
nothing: there is no pretrained knowledge to adapt. So the offline demo first trains its tiny ViT
on a *source* task (digits 0–4) and hands the result to the PEFT stages, which adapt it to a
disjoint *target* task (digits 5–9). The weights land in ``<run>/pretrain/backbone.safetensors``
as a plain timm state dict and are loaded like any local weights file (head replaced).
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import save_file

from unitune.checks import check_safetensors_file
from unitune.data import build_dataset, build_loader, build_transform, resolve_data_config
from unitune.errors import UniTuneError
from unitune.io import atomic_path
from unitune.progress import StageProgress
from unitune.stagelog import StageLog

from .backbone import create_backbone
from .config import RunConfig
from .context import RunContext, RunLayout
from .train import Criterion, base_lr, build_optimizer, build_scheduler, evaluate, plain_family, seed_everything, \
    train_epoch

__all__ = ["pretrain", "pretrained_weights"]  # the run folder's names: unitune.engine.context.RunLayout


def pretrained_weights(run: RunConfig, out: str | Path) -> str | None:
    """The local weights file the PEFT stages load: ``model.weights``, or the pretrain stage's output."""
    if run.pretrain is None:
        weights = run.model.weights
        if weights and Path(weights).suffix == ".safetensors" and Path(weights).exists():
            check_safetensors_file(weights, "model.weights file")
        return weights
    path = RunLayout(out).pretrain_weights
    if not path.exists():
        raise UniTuneError(f"{path}: missing; this config pretrains its backbone: run `unitune pretrain` "
                           f"(or `unitune run`) with it first")
    check_safetensors_file(path, "pretrained backbone")
    return str(path)


def pretrain(run: RunConfig | RunContext, out: str | Path | None = None, progress: bool = True) -> Path:
    """Train every weight of the backbone on the source task; returns the weights file."""
    ctx = RunContext.of(run, out)
    run, out = ctx.run, ctx.out
    if run.pretrain is None:
        raise UniTuneError(f"{run.source}: has no pretrain section")
    cfg, data = run.pretrain, run.pretrain_data
    path = ctx.layout.pretrain_weights
    device = ctx.device
    m = run.model
    # name, kwargs and ViT structure checked on the meta device (milliseconds) before the data is read
    ctx.shapes
    seed_everything(cfg.seed)
    train_set = build_dataset(data, "train", None)
    val_set = build_dataset(data, "val", None)
    # create_backbone checks the name, the kwargs and the ViT structure, as every other stage does
    model = create_backbone(m.backbone, train_set.num_classes, pretrained=m.pretrained, kwargs=m.kwargs,
                            shapes=ctx.shapes)
    model.to(device)
    data_config = resolve_data_config(model)
    train_set.transform = build_transform(data_config, train=True, cfg=data)
    val_set.transform = build_transform(data_config, train=False, cfg=data)
    loader = build_loader(train_set, data, train=True, seed=cfg.seed, device=device)
    val_loader = build_loader(val_set, data, train=False, seed=cfg.seed, device=device)
    optimizer = build_optimizer(model.named_parameters(), cfg, family_of=plain_family(model))
    scheduler = build_scheduler(optimizer, cfg, loader.sampler.num_batches)
    criterion = Criterion(cfg, train_set.num_classes)
    log = StageLog(ctx.layout.pretrain_log, "pretrain", out, run.logging)
    step = 0
    bar = StageProgress("pretrain", cfg.epochs, loader.sampler.num_rank_items, enabled=progress, metric="val_acc")
    with bar:
        for epoch in range(cfg.epochs):
            loader.sampler.set_epoch(epoch)
            stats: dict[str, float] = {}
            loss, step = train_epoch(model, loader, optimizer, scheduler, criterion, cfg, device, step,
                                     f"pretrain epoch {epoch + 1}/{cfg.epochs}", bar, stats)
            val = evaluate(model, val_loader, device, train_set.num_classes, cfg.amp)
            lr = base_lr(optimizer)
            log.write({"epoch": epoch, "loss": loss, "train_acc": stats["train_acc"], "val_acc": val["accuracy"],
                       "lr": lr})
            bar.epoch_end(epoch, loss=loss, train_acc=stats["train_acc"], val_acc=val["accuracy"], lr=lr)
    log.close()
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp))
    if progress:
        print(f"pretrain: source val accuracy {val['accuracy']:.3f} ({len(train_set.classes)} classes) -> {path}")
    return path
