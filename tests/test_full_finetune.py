"""Full fine-tuning as a mode of retrain's loop (``retrain(..., full=True)``, compare's ``full`` rows):
the same numbers as a plain full fine-tuning loop written out here (what compare ran before), bit
for bit on a seeded tiny run; the counts; the export is the fine-tuned plain timm model; an
interrupted run resumes from its checkpoint to the same weights."""

from __future__ import annotations

import json

import pytest
import torch

from tiny import tiny_minivtab_config

import unitune.retrain.train as retrain_train
from unitune.engine.config import load_run_config
from unitune.errors import UniTuneError


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture
def run(tmp_path):
    """configs/minivtab.yaml's tiny ViT (random init, no pretraining) on 48 train images, 2 epochs."""
    return load_run_config(tiny_minivtab_config(tmp_path), [])


def plain_loop(run, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Full fine-tuning as its own loop (compare's ``full_finetune`` before it became a mode):
    the logits on ``x`` and the test accuracy."""
    from unitune.engine.backbone import create_backbone
    from unitune.data import build_dataset, build_loader, build_transform, resolve_data_config
    from unitune.engine.train import Criterion, build_optimizer, build_scheduler, evaluate, seed_everything, train_epoch

    cfg, device = run.retrain, torch.device("cpu")
    seed_everything(cfg.seed)
    train_set = build_dataset(run.data, "trainval", None)
    model = create_backbone(run.model.backbone, train_set.num_classes, pretrained=False, kwargs=run.model.kwargs)
    model.requires_grad_(True)
    data_config = resolve_data_config(model)
    train_set.transform = build_transform(data_config, train=True, cfg=run.data)
    loader = build_loader(train_set, run.data, train=True, seed=cfg.seed, device=device)
    optimizer = build_optimizer(model.named_parameters(), cfg)
    scheduler = build_scheduler(optimizer, cfg, loader.sampler.num_batches)
    criterion, step = Criterion(cfg, train_set.num_classes), 0
    for epoch in range(cfg.epochs):
        loader.sampler.set_epoch(epoch)
        _, step = train_epoch(model, loader, optimizer, scheduler, criterion, cfg, device, step, "full", False)
    test_set = build_dataset(run.data, "test", build_transform(data_config, train=False, cfg=run.data))
    test = evaluate(model, build_loader(test_set, run.data, train=False, seed=cfg.seed, device=device), device,
                    train_set.num_classes, amp=False)
    with torch.no_grad():
        return model.eval()(x), test["accuracy"]


def images() -> torch.Tensor:
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))


def test_full_mode_is_the_plain_loop_bit_for_bit(run, tmp_path):
    want_logits, want_acc = plain_loop(run, images())
    result = retrain_train.retrain(run, None, tmp_path / "full", full=True, progress=False, curves=False)
    assert result["test_accuracy"] == want_acc and result["mode"] == "full" and result["subnet_file"] is None
    d, classes, depth = 64, 8, 4  # the tiny ViT; count has 8 classes
    head = d * classes + classes
    params = result["params"]
    assert params["trainable_params_with_head"] - params["trainable_params"] == params["head_params"] == head
    from unitune.retrain.export import load_export

    model, manifest = load_export(tmp_path / "full" / "export")
    assert manifest["plain_timm"]  # the fine-tuned weights as a plain timm model
    assert sum(p.numel() for p in model.parameters()) == params["trainable_params_with_head"]
    assert depth == len(model.blocks)
    with torch.no_grad():
        assert torch.equal(model.eval()(images()), want_logits)
    saved = json.loads((tmp_path / "full" / "retrain_result.json").read_text())
    assert saved["test_accuracy"] == want_acc


def test_an_interrupted_full_run_resumes_to_the_same_weights(run, tmp_path, monkeypatch):
    want_logits, _ = plain_loop(run, images())
    real_save, saves = retrain_train.save_checkpoint, []

    def stop_after_first_epoch(*args, **kwargs):
        real_save(*args, **kwargs)
        saves.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(retrain_train, "save_checkpoint", stop_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        retrain_train.retrain(run, None, tmp_path / "full", full=True, progress=False, curves=False)
    monkeypatch.setattr(retrain_train, "save_checkpoint", real_save)
    assert saves == [1]
    with pytest.raises(UniTuneError, match="retrain_ckpt"):  # a checkpoint there: resume is asked for
        retrain_train.retrain(run, None, tmp_path / "full", full=True, progress=False, curves=False)
    real_epoch, epochs = retrain_train.train_epoch, []
    monkeypatch.setattr(retrain_train, "train_epoch", lambda *a, **k: epochs.append(a[7]) or real_epoch(*a, **k))
    retrain_train.retrain(run, None, tmp_path / "full", full=True, resume=True, progress=False, curves=False)
    assert epochs == [1]  # the second epoch only, from global step 1 (48 images: one batch of 64 per epoch)
    from unitune.retrain.export import load_export

    model, _ = load_export(tmp_path / "full" / "export")
    with torch.no_grad():
        assert torch.equal(model.eval()(images()), want_logits)
