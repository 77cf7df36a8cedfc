"""The materialised subnet on its pretrained backbone: what the retrain trains and what the
re-rank's stand-alone training scores (both build it here, so the search does not import the
retrain stage), with the retrain settings' fingerprint both key on."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from unitune.errors import UniTuneError, UniTuneWarning
from unitune.supernet import PeftViT, Subnet
from unitune.supernet.fingerprint import backbone_fingerprint
from unitune.supernet.methods.dora import recompute_dora_magnitude
from unitune.supernet.store import check_compatible, read_supernet
from unitune.supernet.wrap import wrap_vit

from .config import RunConfig
from .context import RunContext, RunLayout
from .pretrain import pretrained_weights
from .supernet_train import build_backbone, build_model


# Settings a resumed retrain may change without changing what is trained (another machine, another
# worker count, the config file moved: ``data.where`` holds its path).
RESUMABLE_CHANGES = {"data": ("num_workers", "check_images", "where"), "retrain": ("log_every",)}


def retrain_fingerprint(run: RunConfig) -> dict[str, Any]:
    """What must not change between a retrain checkpoint and its resumption."""
    return {name: {k: v for k, v in run.section(name).items() if k not in RESUMABLE_CHANGES.get(name, ())}
            for name in ("model", "data", "space", "retrain")}


def backbone_weights(run: RunConfig, out: Path, backbone: str | Path | None = None) -> str | None:
    """The pretrained backbone's weights file: ``backbone`` (a weights file, or a run folder whose
    ``pretrain/backbone.safetensors`` is taken) or this run's (:func:`pretrained_weights`)."""
    if backbone is None:
        return pretrained_weights(run, out)
    from unitune.checks import check_safetensors_file
    from unitune.engine.context import PRETRAIN_DIR, PRETRAIN_WEIGHTS
    from unitune.weights import TORCH_SUFFIXES

    path = Path(backbone)
    if path.is_dir():
        path = path / PRETRAIN_DIR / PRETRAIN_WEIGHTS
        if not path.is_file():
            raise UniTuneError(f"--backbone {backbone}: a folder without {PRETRAIN_DIR}/{PRETRAIN_WEIGHTS}; give a run "
                               f"folder that pretrained its backbone or a .safetensors weights file")
    elif not path.is_file():
        raise UniTuneError(f"--backbone {backbone}: no such file or run folder")
    if path.suffix.lower() not in TORCH_SUFFIXES:  # a torch.save'd state dict is read by the loader itself
        check_safetensors_file(path, "pretrained backbone")
    return str(path)


def build_subnet_model(run: RunConfig | RunContext, subnet: Subnet, num_classes: int, device: torch.device,
                       out: Path, init: str, supernet_file: Path | None,
                       backbone: str | Path | None = None) -> PeftViT:
    """The materialised subnet: fresh PEFT weights on the pretrained backbone, or the supernet's
    trained weights (sliced to the subnet's sizes, head included)."""
    ctx = RunContext.of(run, out)
    run = ctx.run
    weights = backbone_weights(run, out, backbone)
    label = "--backbone" if backbone is not None else None
    if init == "supernet":
        supernet_file = supernet_file or RunLayout(out).supernet
        tensors, meta = read_supernet(supernet_file)
        check_compatible(meta, supernet_file, run.model.backbone, ctx.space.to_dict())
        supernet = build_model(ctx, num_classes, device, weights, label)
        supernet.load_trainable_state_dict({k: v.to(device) for k, v in tensors.items()}, source=str(supernet_file))
        model = supernet.materialize(subnet)
        if other_backbone(meta, model, backbone):
            # DoRA's magnitude was computed from (and trained with) the supernet's backbone weight.
            n = recompute_dora_magnitude(model)
            if n:
                warnings.warn(f"{supernet_file}: trained on other backbone weights than this retrain's; DoRA's "
                              f"magnitude recomputed from them ({n} layers, m = ||W + s*B A||)", UniTuneWarning,
                              stacklevel=2)
        return model
    vit = build_backbone(ctx, num_classes, weights, label)
    return wrap_vit(vit, ctx.space, subnet).to(device)


def other_backbone(meta: dict[str, Any], model: PeftViT, backbone: str | Path | None) -> bool:
    """Whether ``model``'s backbone weights differ from those the supernet was trained on: by the
    fingerprint the supernet file records, or (a file from before it) by ``--backbone`` given."""
    saved = meta.get("backbone_sha256")
    if isinstance(saved, str):
        return backbone_fingerprint(model.vit) != saved
    return backbone is not None
