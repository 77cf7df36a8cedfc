"""Retrain the chosen subnet and export it.

The honest protocol: the subnet was searched on train/val; it is now materialised with exactly
its sizes, trained on train+val (``trainval``: VTAB's train800val200), and scored once on the
test split after the last epoch — never the best of several test evaluations. The result is
merged (LoRA and SSF folded into the backbone) and exported to ``<run>/export``.

Full fine-tuning (``retrain(..., full=True)``, compare's ``full`` rows) is a mode of the same
loop rather than a second one: no subnet, every backbone weight and the head trainable, AdamW
over them all (no decay on 1-d weights), the same schedule, checkpoints, single test score and
export (a plain timm model).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from unitune.data import build_dataset, build_loader, build_transform, resolve_data_config
from unitune.engine.config import RunConfig, apply_recipe
from unitune.engine.context import EXPORT_DIR, RunContext
from unitune.engine.subnet_model import backbone_weights, build_subnet_model, retrain_fingerprint
from unitune.engine.supernet_train import changed_keys
from unitune.errors import UniTuneError
from unitune.io import write_json_atomic
from unitune.progress import StageProgress
from unitune.stagelog import StageLog
from unitune.supernet import PeftViT, Subnet, count_params
from unitune.supernet.methods.vit import check_vit, classifier_heads
from unitune.supernet.wrap import make_optimizer
from unitune.engine.train import (
    Criterion, base_lr, build_optimizer, build_scheduler, evaluate, load_checkpoint, plain_family,
    refuse_unasked_resume, rng_state, round_metric, save_checkpoint, seed_everything, set_rng_state, train_epoch,
)
from unitune.weights import check_tensor

from .export import export_model


def check_init_source(run: RunConfig) -> None:
    """``retrain.init: supernet`` starts from a supernet's weights, which a standalone-fitness
    search never trains: ``unitune run`` and ``unitune compare`` refuse the pair before their
    first stage rather than after the search."""
    if run.retrain.init == "supernet" and not run.search.needs_supernet:
        raise UniTuneError(f"{run.source}: retrain.init: supernet starts from the supernet's weights, but "
                           f"search.fitness: standalone trains no supernet; use retrain.init: pretrained")




def load_subnet(path: str | Path, run: RunConfig | RunContext, index: int | None = None) -> Subnet:
    """The subnet of a subnet file, or one entry of an ``export-subnet --top/--pareto`` list
    (``FILE#N``, ``FILE#trial-T`` or ``index``: see :func:`unitune.search.select_subnet`)."""
    return load_subnet_entry(path, run, index)[0]


def load_subnet_entry(path: str | Path, run: RunConfig | RunContext,
                      index: int | None = None) -> tuple[Subnet, dict[str, Any] | None]:
    """As :func:`load_subnet`, with the entry's ``meta.recipe`` (the learning rate, weight decay
    and per-family multipliers a search chose with it), or None."""
    from unitune.search.export import select_subnet

    ctx = run if isinstance(run, RunContext) else RunContext(run, ".")  # no folder read: the depth is the context's
    run = ctx.run
    subnet, meta, path = select_subnet(path, index, depth=lambda _: ctx.depth)
    if subnet.backbone and subnet.backbone != run.model.backbone:
        raise UniTuneError(f"{path}: a subnet for backbone {subnet.backbone!r}, but the config uses "
                           f"{run.model.backbone!r}")
    recipe = (meta or {}).get("recipe")
    if recipe is not None:
        apply_recipe(run.retrain, recipe, path)  # checked now, before any work
    return subnet, recipe


def full_state(model: PeftViT) -> dict[str, torch.Tensor]:
    """What full fine-tuning trains and checkpoints: every weight of the timm model, by its name."""
    return {n: p.detach() for n, p in model.vit.named_parameters()}


def load_full_state(model: PeftViT, state: dict[str, torch.Tensor], source: str) -> None:
    """Load what :func:`full_state` saved: the same names and shapes, finite floats, or one line."""
    own = dict(model.vit.named_parameters())
    if own.keys() != state.keys():
        odd = sorted(own.keys() ^ state.keys())
        raise UniTuneError(f"{source}: does not fit this model (first differing weight {odd[0]!r})")
    for name, p in own.items():  # every tensor checked before any is copied
        check_tensor(name, state[name], p, source)
    with torch.no_grad():
        for name, p in own.items():
            p.copy_(state[name])


def retrain(run: RunConfig | RunContext, subnet_path: str | Path | None, out: str | Path, init: str | None = None,
            supernet_file: str | Path | None = None, resume: bool = False, progress: bool = True,
            subnet_index: int | None = None, backbone: str | Path | None = None,
            curves: bool = True, full: bool = False) -> dict[str, Any]:
    """Train ``subnet_path``'s subnet on trainval, test it once, merge and export it.

    ``subnet_path`` may name one entry of a list file (``FILE#N``; or ``subnet_index``);
    ``backbone``: the pretrained weights from another run folder or a weights file; ``curves``:
    redraw ``out/plots/curves.png`` at the end (compare's many cells skip it). ``full``: full
    fine-tuning of the pretrained backbone instead of a subnet (``subnet_path`` None)."""
    ctx = RunContext.of(run, out)
    run, out, cfg = ctx.run, ctx.out, ctx.run.retrain
    init = "pretrained" if full else init or cfg.init  # full fine-tuning starts from the backbone
    if init not in ("pretrained", "supernet"):
        raise UniTuneError(f"--init: expected 'pretrained' or 'supernet', got {init!r}")
    if full != (subnet_path is None):
        raise ValueError("retrain: give a subnet file, or full=True without one")
    subnet, recipe = (Subnet.uniform(ctx.depth), None) if full else load_subnet_entry(subnet_path, ctx, subnet_index)
    if recipe is not None:  # the search's choice of lr / weight decay / multipliers, over the config's
        cfg = apply_recipe(cfg, recipe, str(subnet_path))
        if progress:
            print(f"retrain: {subnet_path}'s recipe sets " + ", ".join(f"{k} {v}" for k, v in recipe.items())
                  + " (over the config's retrain section)")
    if subnet_index is not None:
        subnet_path = f"{subnet_path}#{subnet_index}"  # what the result and provenance record
    if backbone is not None:
        backbone_weights(run, out, backbone)  # checked before any work
    device = ctx.device
    ckpt_dir = ctx.layout.retrain_ckpt
    refuse_unasked_resume(ckpt_dir, resume)
    seed_everything(cfg.seed)

    # Index (and check) both splits before any weight is loaded; transforms follow the model.
    train_set = build_dataset(run.data, "trainval", None)
    test_set = build_dataset(run.data, "test", None)
    test_set.verify_files()  # read only after the last epoch: a broken file is named now, not then
    num_classes = train_set.num_classes
    space, shapes = ctx.space, ctx.shapes
    subnet.check(len(shapes.blocks), space, source=str(subnet_path))  # before any weight is loaded
    check_vit(shapes, f"backbone {run.model.backbone!r}", sizes=subnet)  # SSF only where the merge can fold it
    model = build_subnet_model(ctx, subnet, num_classes, device, out, init,
                               Path(supernet_file) if supernet_file else None, backbone)
    dims = ctx.dims_for(num_classes)
    count = count_params(subnet, dims, space)
    materialised = sum(p.numel() for _, p in model.peft_named_parameters())
    assert materialised == count.total, (materialised, count.total)  # exact sizes, no super-size tensor
    params = count.to_dict()
    if full:  # every weight trains; the counts are the backbone's (the head apart) and the head's
        model.requires_grad_(True)
        head = sum(p.numel() for h in classifier_heads(model.vit).values() for p in h.parameters())
        total = sum(p.numel() for p in model.vit.parameters())
        params = {"trainable_params": total - head, "head_params": head, "trainable_params_with_head": total,
                  "per_method": {"full": total - head}}

    data_config = resolve_data_config(model.vit)
    train_set.transform = build_transform(data_config, train=True, cfg=run.data)
    test_set.transform = build_transform(data_config, train=False, cfg=run.data)
    loader = build_loader(train_set, run.data, train=True, seed=cfg.seed, device=device)
    test_loader = build_loader(test_set, run.data, train=False, seed=cfg.seed, device=device)
    # The API's optimizer (unitune.make_optimizer): its guard has nothing to keep on a materialised
    # subnet (every tensor is wholly in use), but it is the one way the PEFT optimizer is built.
    # Full fine-tuning: every weight of the timm model (timm's 1-d rule for weight decay).
    optimizer = build_optimizer(model.vit.named_parameters(), cfg, family_of=plain_family(model.vit)) if full else \
        make_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay, lr_mult=cfg.lr_mult)
    state_of = (lambda: full_state(model)) if full else model.trainable_state_dict
    steps = loader.sampler.num_batches
    scheduler = build_scheduler(optimizer, cfg, steps)
    criterion = Criterion(cfg, num_classes)
    fingerprint = {"config": retrain_fingerprint(run), "subnet": subnet.to_dict()["subnet"], "init": init}
    if full:  # (only then: a subnet checkpoint written before the mode existed still resumes)
        fingerprint["mode"] = "full"
    if recipe is not None:  # likewise: only then, so older checkpoints still resume
        fingerprint["recipe"] = recipe

    start_epoch = 0
    loaded = load_checkpoint(ckpt_dir) if resume else None
    if loaded is not None:
        weights, state = loaded
        saved = state["fingerprint"]
        if saved != fingerprint:
            changed = changed_keys(saved.get("config", {}), fingerprint["config"])
            if saved.get("subnet") != fingerprint["subnet"]:
                changed.append("the subnet")
            if saved.get("init") != init:
                changed.append(f"init: {saved.get('init')!r} -> {init!r}")
            if saved.get("mode") != fingerprint.get("mode"):
                changed.append("full fine-tuning or not")
            if saved.get("recipe") != fingerprint.get("recipe"):
                changed.append("the subnet file's meta.recipe")
            more = f" (and {len(changed) - 3} more)" if len(changed) > 3 else ""
            raise UniTuneError(f"{ckpt_dir}: the config or subnet changed since this checkpoint "
                               f"({'; '.join(changed[:3])}{more}); resume with the same ones, or remove the "
                               f"folder to start over")
        weights = {k: v.to(device) for k, v in weights.items()}
        if full:
            load_full_state(model, weights, str(ckpt_dir))
        else:
            model.load_trainable_state_dict(weights, source=str(ckpt_dir))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        start_epoch = state["epoch"]
    log = StageLog(ctx.layout.retrain_log, "retrain", out, run.logging,
                   resume_epoch=start_epoch if loaded is not None else None)

    started = time.perf_counter()
    global_step = start_epoch * steps
    # Retrain has no val split (it trains on train+val, and test is scored once, at the end), so
    # its per-epoch metric is the accuracy on the batches it trains on.
    bar = StageProgress("retrain", cfg.epochs, loader.sampler.num_rank_items, enabled=progress,
                        start_epoch=start_epoch, metric="train_acc")
    with bar:
        for epoch in range(start_epoch, cfg.epochs):
            loader.sampler.set_epoch(epoch)
            stats: dict[str, float] = {}
            loss, global_step = train_epoch(model, loader, optimizer, scheduler, criterion, cfg, device, global_step,
                                            f"retrain epoch {epoch + 1}/{cfg.epochs}", bar, stats)
            log.write({"epoch": epoch, "loss": loss, "train_acc": stats["train_acc"],
                       "lr": base_lr(optimizer)})
            save_checkpoint(ckpt_dir, state_of(),
                            {"epoch": epoch + 1, "optimizer": optimizer.state_dict(),
                             "scheduler": scheduler.state_dict(), "rng": rng_state(), "fingerprint": fingerprint})
            bar.epoch_end(epoch, loss=loss, train_acc=stats["train_acc"], lr=base_lr(optimizer))
    log.close(curves=curves)

    # The test split is scored once, after the last epoch: the number reported. In fp32 whatever
    # ``amp`` trained with: bf16 is a training-speed choice, not part of the model, and the
    # export is evaluated (and used) in fp32, so bf16 rounding would make the two disagree.
    test = evaluate(model, test_loader, device, num_classes, amp=False)
    test["accuracy"] = round_metric(test["accuracy"])  # as `unitune evaluate` reports it
    result = {
        "test_accuracy": test["accuracy"], "test_images": test["n"], "test_precision": "float32",
        "epochs": cfg.epochs, "init": init,
        "subnet_file": None if full else str(subnet_path), "params": params, "seconds": time.perf_counter() - started,
    }
    if full:
        result["mode"] = "full"
    if recipe is not None:
        result["recipe"] = dict(recipe)
    provenance = {"config": run.raw, "config_file": run.source, "subnet_file": result["subnet_file"], "init": init,
                  "backbone_file": backbone_weights(run, out, backbone),
                  "supernet_file": str(supernet_file or ctx.layout.supernet) if init == "supernet" else None,
                  "test_accuracy": test["accuracy"], "test_split": "test", "test_precision": "float32",
                  "data": run.data.to_dict()}
    # The result first: the test score is the run's one measurement and must survive a failing merge.
    write_json_atomic(ctx.layout.retrain_result, result)
    export_model(ctx.layout.export, model.eval(), run.model.backbone, model_kwargs=run.model.kwargs,
                 class_names=list(train_set.classes), data_config=data_config, provenance=provenance)
    if progress:  # under --quiet the command prints it (cli._retrain)
        print(result_line(result, out))
    return result


def result_line(result: dict[str, Any], out: Path) -> str:
    """Retrain's closing line (stdout)."""
    return (f"retrain: test accuracy {result['test_accuracy']:.4f} ({result['test_images']} images, last epoch) "
            f"-> {Path(out) / EXPORT_DIR}")
