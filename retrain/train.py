"""Retrain the chosen subnet and export it.

The honest protocol: the subnet was searched on train/val; it is now materialised with exactly
its sizes, trained on train+val (``trainval``: VTAB's train800val200), and scored once on the
test split after the last epoch — never the best of several test evaluations. The result is
merged (LoRA and SSF folded into the backbone) and exported to ``<run>/export``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from unitune.data import build_dataset, build_loader, build_transform, resolve_data_config
from unitune.engine.backbone import create_backbone
from unitune.engine.config import RunConfig
from unitune.engine.subnet_model import backbone_weights, build_subnet_model, retrain_fingerprint
from unitune.engine.supernet_train import SUPERNET_FILE, changed_keys
from unitune.errors import UniTuneError
from unitune.io import write_json_atomic
from unitune.progress import StageProgress
from unitune.stagelog import StageLog
from unitune.supernet import BackboneDims, SearchSpace, Subnet, count_params
from unitune.supernet.methods.vit import check_vit
from unitune.supernet.wrap import make_optimizer
from unitune.engine.train import (
    Criterion, build_scheduler, evaluate, load_checkpoint, pick_device,
    refuse_unasked_resume, rng_state, round_metric, save_checkpoint, seed_everything, set_rng_state, train_epoch,
)

from .export import export_model

CKPT_DIR = "retrain_ckpt"
LOG_FILE = "retrain_log.jsonl"
RESULT_FILE = "retrain_result.json"
EXPORT_DIR = "export"


def check_init_source(run: RunConfig) -> None:
    """``retrain.init: supernet`` starts from a supernet's weights, which a standalone-fitness
    search never trains: ``unitune run`` and ``unitune compare`` refuse the pair before their
    first stage rather than after the search."""
    if run.retrain.init == "supernet" and not run.search.needs_supernet:
        raise UniTuneError(f"{run.source}: retrain.init: supernet starts from the supernet's weights, but "
                           f"search.fitness: standalone trains no supernet; use retrain.init: pretrained")


def _run_depth(run: RunConfig) -> int:
    """The backbone's block count (built on the meta device: shapes only, no weight read)."""
    from unitune.engine.backbone import create_backbone

    return len(create_backbone(run.model.backbone, 1, kwargs=run.model.kwargs, meta=True).blocks)


def load_subnet(path: str | Path, run: RunConfig, index: int | None = None) -> Subnet:
    """The subnet of a subnet file, or one entry of an ``export-subnet --top/--pareto`` list
    (``FILE#N``, ``FILE#trial-T`` or ``index``: see :func:`unitune.search.select_subnet`)."""
    from unitune.search.export import select_subnet

    subnet, _, path = select_subnet(path, index, depth=lambda _: _run_depth(run))
    if subnet.backbone and subnet.backbone != run.model.backbone:
        raise UniTuneError(f"{path}: a subnet for backbone {subnet.backbone!r}, but the config uses "
                           f"{run.model.backbone!r}")
    return subnet


def retrain(run: RunConfig, subnet_path: str | Path, out: str | Path, init: str | None = None,
            supernet_file: str | Path | None = None, resume: bool = False, progress: bool = True,
            subnet_index: int | None = None, backbone: str | Path | None = None,
            curves: bool = True) -> dict[str, Any]:
    """Train ``subnet_path``'s subnet on trainval, test it once, merge and export it.

    ``subnet_path`` may name one entry of a list file (``FILE#N``; or ``subnet_index``);
    ``backbone``: the pretrained weights from another run folder or a weights file; ``curves``:
    redraw ``out/plots/curves.png`` at the end (compare's many cells skip it)."""
    out = Path(out)
    cfg = run.retrain
    init = init or cfg.init
    if init not in ("pretrained", "supernet"):
        raise UniTuneError(f"--init: expected 'pretrained' or 'supernet', got {init!r}")
    subnet = load_subnet(subnet_path, run, subnet_index)
    if subnet_index is not None:
        subnet_path = f"{subnet_path}#{subnet_index}"  # what the result and provenance record
    if backbone is not None:
        backbone_weights(run, out, backbone)  # checked before any work
    device = pick_device(run.device)
    ckpt_dir = out / CKPT_DIR
    refuse_unasked_resume(ckpt_dir, resume)
    seed_everything(cfg.seed)

    # Index (and check) both splits before any weight is loaded; transforms follow the model.
    train_set = build_dataset(run.data, "trainval", None)
    test_set = build_dataset(run.data, "test", None)
    test_set.verify_files()  # read only after the last epoch: a broken file is named now, not then
    num_classes = train_set.num_classes
    space = SearchSpace.from_dict(run.space, source=f"{run.source}: space")
    shapes = create_backbone(run.model.backbone, num_classes, kwargs=run.model.kwargs, meta=True)
    subnet.check(len(shapes.blocks), space, source=str(subnet_path))  # before any weight is loaded
    check_vit(shapes, f"backbone {run.model.backbone!r}", sizes=subnet)  # SSF only where the merge can fold it
    model = build_subnet_model(run, subnet, num_classes, device, out, init,
                               Path(supernet_file) if supernet_file else None, backbone)
    dims = BackboneDims.from_model(model)
    count = count_params(subnet, dims, space)
    materialised = sum(p.numel() for _, p in model.peft_named_parameters())
    assert materialised == count.total, (materialised, count.total)  # exact sizes, no super-size tensor

    data_config = resolve_data_config(model.vit)
    train_set.transform = build_transform(data_config, train=True, cfg=run.data)
    test_set.transform = build_transform(data_config, train=False, cfg=run.data)
    loader = build_loader(train_set, run.data, train=True, seed=cfg.seed, device=device)
    test_loader = build_loader(test_set, run.data, train=False, seed=cfg.seed, device=device)
    # The API's optimizer (unitune.make_optimizer): its guard has nothing to keep on a materialised
    # subnet (every tensor is wholly in use), but it is the one way the PEFT optimizer is built.
    optimizer = make_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = loader.sampler.num_batches
    scheduler = build_scheduler(optimizer, cfg, steps)
    criterion = Criterion(cfg, num_classes)
    fingerprint = {"config": retrain_fingerprint(run), "subnet": subnet.to_dict()["subnet"], "init": init}

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
            more = f" (and {len(changed) - 3} more)" if len(changed) > 3 else ""
            raise UniTuneError(f"{ckpt_dir}: the config or subnet changed since this checkpoint "
                               f"({'; '.join(changed[:3])}{more}); resume with the same ones, or remove the "
                               f"folder to start over")
        model.load_trainable_state_dict({k: v.to(device) for k, v in weights.items()}, source=str(ckpt_dir))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        start_epoch = state["epoch"]
    log = StageLog(out / LOG_FILE, "retrain", out, run.logging,
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
                       "lr": optimizer.param_groups[0]["lr"]})
            save_checkpoint(ckpt_dir, model.trainable_state_dict(),
                            {"epoch": epoch + 1, "optimizer": optimizer.state_dict(),
                             "scheduler": scheduler.state_dict(), "rng": rng_state(), "fingerprint": fingerprint})
            bar.epoch_end(epoch, loss=loss, train_acc=stats["train_acc"], lr=optimizer.param_groups[0]["lr"])
    log.close(curves=curves)

    # The test split is scored once, after the last epoch: the number reported. In fp32 whatever
    # ``amp`` trained with: bf16 is a training-speed choice, not part of the model, and the
    # export is evaluated (and used) in fp32, so bf16 rounding would make the two disagree.
    test = evaluate(model, test_loader, device, num_classes, amp=False)
    test["accuracy"] = round_metric(test["accuracy"])  # as `unitune evaluate` reports it
    result = {
        "test_accuracy": test["accuracy"], "test_images": test["n"], "test_precision": "float32",
        "epochs": cfg.epochs, "init": init,
        "subnet_file": str(subnet_path), "params": count.to_dict(), "seconds": time.perf_counter() - started,
    }
    provenance = {"config": run.raw, "config_file": run.source, "subnet_file": str(subnet_path), "init": init,
                  "backbone_file": backbone_weights(run, out, backbone),
                  "supernet_file": str(supernet_file or out / SUPERNET_FILE) if init == "supernet" else None,
                  "test_accuracy": test["accuracy"], "test_split": "test", "test_precision": "float32",
                  "data": run.data.to_dict()}
    # The result first: the test score is the run's one measurement and must survive a failing merge.
    write_json_atomic(out / RESULT_FILE, result)
    export_model(out / EXPORT_DIR, model.eval(), run.model.backbone, model_kwargs=run.model.kwargs,
                 class_names=list(train_set.classes), data_config=data_config, provenance=provenance)
    if progress:  # under --quiet the command prints it (cli._retrain)
        print(result_line(result, out))
    return result


def result_line(result: dict[str, Any], out: Path) -> str:
    """Retrain's closing line (stdout)."""
    return (f"retrain: test accuracy {result['test_accuracy']:.4f} ({result['test_images']} images, last epoch) "
            f"-> {Path(out) / EXPORT_DIR}")
