"""Tiny timm ViTs (32 px, patch 8, width 64, depth 4) in the variants every feature must survive."""

from __future__ import annotations

import timm
import torch

TINY = dict(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4)

# class token; register tokens with LayerScale; no class token with average pooling; no qkv bias.
VARIANTS = {
    "cls": {},
    "reg_layerscale": dict(reg_tokens=2, init_values=0.1),
    "avgpool_noclass": dict(class_token=False, global_pool="avg"),
    "no_qkv_bias": dict(qkv_bias=False),
}


def tiny_vit(variant: str = "cls", num_classes: int = 5, seed: int = 0, **extra) -> torch.nn.Module:
    torch.manual_seed(seed)
    kwargs = {**TINY, **VARIANTS[variant], **extra}
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=num_classes, **kwargs)


def tiny_minivtab_config(folder, task: str = "count") -> "Path":
    """configs/minivtab.yaml's tiny ViT (random init, no pretraining) on 48 train / 16 val / 32 test
    images of ``task``, a 2-epoch retrain: a whole run in seconds. Written as ``folder/config.yaml``."""
    from pathlib import Path

    import yaml

    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "minivtab.yaml").read_text())
    for key in ("pretrain", "compare"):
        cfg.pop(key)
    cfg["device"] = "cpu"
    cfg["model"]["pretrained"] = False
    cfg["data"].update(task=task, split_sizes=[48, 16, 32])
    cfg["retrain"].update(epochs=2, warmup_epochs=1)
    path = Path(folder) / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def dashboard_note(study, trial=None) -> str:
    """A note as optuna-dashboard reads it from the storage (its own reader)."""
    from optuna_dashboard._note import get_note_from_system_attrs

    return get_note_from_system_attrs(study._storage.get_study_system_attrs(study._study_id),
                                      None if trial is None else trial._trial_id)["body"]
