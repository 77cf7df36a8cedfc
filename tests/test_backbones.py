"""Every timm ViT family's fate is decided before training (issue 14): supported, or refused
with one line that says why. Models are built with random weights (``pretrained=False``) or on
the meta device, so nothing is downloaded.

- distilled DeiT: supported (the distillation token is a prefix token; both heads train);
- hybrid CNN+ViT (``HybridEmbed``): refused, before any weight is read;
- RmsNorm / SimpleNorm backbones: SSF refused up front (it could not be merged after training);
  the other methods work;
- a frozen BatchNorm stays in eval mode; ``retrain_result.json`` is written before the merge;
- ``dynamic_img_size=True`` still trains at the built ``img_size``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
import yaml

from unitune.engine.backbone import create_backbone
from unitune.commands.cli import main as cli_main
from unitune.data import resolve_data_config
from unitune.errors import UniTuneError
from unitune.retrain.export import export_model, load_model
from unitune.supernet.merge import merge
from unitune.supernet import BackboneDims, PeftViT, SearchSpace, Subnet
from unitune.supernet.methods.vpt import PromptedBlock

from tiny import TINY

NO_SSF = SearchSpace(ssf=(0,), ssf_global=(0,))


def build(name: str, seed: int = 0, **extra) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, num_classes=5, **{**TINY, **extra})


def images(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(3))


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest's: tiny models run faster on one thread


# ---- distilled DeiT: supported --------------------------------------------------------------------


def test_distilled_deit_trains_both_heads_merges_and_exports(tmp_path):
    vit = build("deit_tiny_distilled_patch16_224")
    assert vit.num_prefix_tokens == 2 and isinstance(vit.get_classifier(), tuple)
    space = SearchSpace(lora=(0, 2), adapter=(0, 3), vpt=(0, 2))
    model = PeftViT(vit, space)
    heads = [n for n, _ in model.trainable_named_parameters() if n.startswith("head")]
    assert heads == ["head.weight", "head.bias", "head_dist.weight", "head_dist.bias"]
    # the parameter count's head is both heads: 2 x (64 x 5 + 5)
    assert BackboneDims.from_model(model).head_params == 2 * (64 * 5 + 5)

    # a training step moves both heads (timm averages their logits while not distilling)
    params = dict(model.trainable_named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    optimizer = torch.optim.AdamW(list(params.values()), lr=1e-2)
    model.train()
    torch.nn.functional.cross_entropy(model(images()), torch.tensor([0, 1, 2, 3])).backward()
    optimizer.step()
    for name in heads:
        assert not torch.equal(params[name].detach(), before[name]), name

    # prompts go after both prefix tokens: class and distillation token keep their places
    layer = next(m for m in model.modules() if isinstance(m, PromptedBlock))
    assert layer.num_prefix_tokens == 2

    model.eval().set_subnet(Subnet((2, 0, 2, 0), (3, 3, 0, 0), (2, 0, 0, 2), (1, 0, 1, 0), 1))
    with torch.no_grad():
        expected = model(images())
        merged = merge(model)
        torch.testing.assert_close(merged.model(images()), expected, atol=1e-5, rtol=0)
    export_model(tmp_path / "export", model, "deit_tiny_distilled_patch16_224", model_kwargs=TINY)
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "export")(images()), expected, atol=1e-5, rtol=0)


# ---- hybrid CNN+ViT: refused --------------------------------------------------------------------


@pytest.mark.parametrize("name", timm.list_models(module="vision_transformer_hybrid"))
def test_hybrid_vits_are_refused_in_one_line(name):
    with pytest.raises(UniTuneError) as info:
        create_backbone(name, 5, meta=True)
    message = str(info.value)
    assert message.startswith(f"backbone {name!r}: a hybrid CNN+ViT with a HybridEmbed patch embedding is not "
                              f"supported") and "\n" not in message


def test_hybrid_is_refused_before_its_weights_are_read(tmp_path):
    weights = tmp_path / "r26.safetensors"
    weights.write_bytes(b"not read")  # reading it would fail with another message
    with pytest.raises(UniTuneError, match=r"^backbone 'vit_small_r26_s32_224': a hybrid CNN\+ViT"):
        create_backbone("vit_small_r26_s32_224", 5, weights=str(weights))


def test_frozen_batchnorm_stays_in_eval_mode():
    """A ViT whose (frozen) patch embedding carries a BatchNorm: train() must not let a forward
    pass renormalise with batch statistics or overwrite the running statistics."""
    vit = build("vit_tiny_patch16_224")
    conv = vit.patch_embed.proj
    bn = torch.nn.BatchNorm2d(conv.out_channels)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    vit.patch_embed.proj = torch.nn.Sequential(conv, bn)
    model = PeftViT(vit, NO_SSF)
    stats = (bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked))
    model.train()
    assert model.training and model.vit.blocks[0].training and not bn.training
    train_logits = model(images())
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])
    assert int(bn.num_batches_tracked) == stats[2]
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(images()), train_logits.detach(), atol=1e-6, rtol=0)  # no dropout here


# ---- RmsNorm / SimpleNorm: SSF refused up front, the rest works -----------------------------------


@pytest.mark.parametrize("norm", ["rmsnorm", "simplenorm"])
def test_ssf_on_an_rmsnorm_backbone_is_refused_before_training(norm):
    kind = {"rmsnorm": "RmsNorm", "simplenorm": "SimpleNorm"}[norm]
    vit = build("vit_tiny_patch16_224", norm_layer=norm)
    with pytest.raises(UniTuneError, match=rf"SSF after block 0's norm1 \(a {kind}\) could not be merged .*"
                                           r"space\.ssf: \[0\]"):
        PeftViT(vit, SearchSpace())
    with pytest.raises(UniTuneError, match=rf"global SSF at the final norm \(a {kind}\) .*space\.ssf_global: \[0\]"):
        PeftViT(vit, SearchSpace(ssf=(0,)))
    model = PeftViT(vit, NO_SSF).eval()  # LoRA, Adapter and VPT need no fold into the norm
    model.set_subnet(Subnet((2, 1, 0, 3), (0, 4, 2, 0), (1, 0, 3, 0), (0,) * 4, 0))
    with torch.no_grad():
        for _, p in model.peft_named_parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 0.2)
        torch.testing.assert_close(merge(model).model(images()), model(images()), atol=1e-5, rtol=0)


def _run_config(tmp_path: Path, **model) -> Path:
    cfg = {"name": "bb", "device": "cpu",
           "model": {"backbone": "vit_tiny_patch16_224", "kwargs": {**TINY, "depth": 2}, **model},
           "data": {"source": "synthetic", "num_classes": 2, "samples_per_class": 4, "image_size": 32,
                    "batch_size": 4, "num_workers": 0},
           "space": {"lora": [0, 2], "adapter": [0, 2], "vpt": [0, 1]},
           "supernet": {"epochs": 1, "lr": 0.01}, "retrain": {"epochs": 1, "lr": 0.01}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_rmsnorm_backbone_with_ssf_fails_the_supernet_before_it_starts(tmp_path, capsys):
    cfg = _run_config(tmp_path, kwargs={**TINY, "depth": 2, "norm_layer": "rmsnorm"})
    out = tmp_path / "out"
    assert cli_main(["supernet", "--quiet", "--config", str(cfg), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("unitune: error: backbone 'vit_tiny_patch16_224': SSF after block 0's "
                                               "norm1 (a RmsNorm) could not be merged"), err
    assert not out.exists()


def test_retrain_with_an_ssf_subnet_on_rmsnorm_is_refused_before_training(tmp_path, capsys):
    cfg = _run_config(tmp_path, kwargs={**TINY, "depth": 2, "norm_layer": "rmsnorm"})
    subnet = Subnet((2, 0), (0, 0), (0, 0), (0, 1), 0).save(tmp_path / "s.yaml")
    out = tmp_path / "out"
    assert cli_main(["retrain", "--quiet", "--config", str(cfg), "--subnet", str(subnet), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "SSF after block 1's norm1 (a RmsNorm) could not be merged" in err[0], err
    assert not out.exists()


def test_retrain_result_is_written_before_the_merge(tmp_path, monkeypatch):
    """The test score is the run's one measurement: a merge or export that fails must not lose it."""
    import unitune.retrain.train as retrain_module
    from unitune.engine.context import RETRAIN_RESULT

    def failing_export(*args, **kwargs):
        raise UniTuneError("merge: failed (simulated)")

    monkeypatch.setattr(retrain_module, "export_model", failing_export)
    cfg = _run_config(tmp_path)
    subnet = Subnet((2, 0), (0, 2), (1, 0), (0, 0), 0).save(tmp_path / "s.yaml")
    from unitune.engine.config import load_run_config

    with pytest.raises(UniTuneError, match="simulated"):
        retrain_module.retrain(load_run_config(cfg), subnet, tmp_path / "out", progress=False)
    result = json.loads((tmp_path / "out" / RETRAIN_RESULT).read_text())
    assert result["test_images"] > 0 and 0 <= result["test_accuracy"] <= 1 and result["epochs"] == 1


# ---- the families, in one table (the README's) ------------------------------------------------------

FATES = {  # representative model -> None (supported) or the start of the refusal
    "vit_base_patch16_224": None,
    "vit_base_patch16_clip_224": None,  # pre-norm CLIP
    "vit_base_patch16_reg4_gap_256": None,  # register tokens, average pooling
    "vit_base_patch16_siglip_224": None,  # attention pooling (map)
    "deit_base_patch16_224": None,
    "deit3_base_patch16_224": None,  # LayerScale
    "deit_base_distilled_patch16_224": None,
    "flexivit_base": None,
    "vit_small_r26_s32_224": "a hybrid CNN+ViT",
    "vitamin_small_224": "a hybrid CNN+ViT",
    "vit_base_patch16_xp_224": "block 0 (ParallelScalingBlock) has no 'norm1'",  # parallel blocks
    "aimv2_large_patch14_224": "block 0's mlp (SwiGLU) has no 'fc1'",  # RmsNorm + SwiGLU
    "vit_dwee_patch16_reg1_gap_256": None,  # differential attention
    "vit_base_patch16_rpn_224": None,  # residual post-norm blocks
    "vit_medium_patch16_gap_256": None,
    "vit_so150m2_patch16_reg1_gap_256": None,
    "resnet18": "is not a timm VisionTransformer",
    "eva02_tiny_patch14_224": "is not a timm VisionTransformer",
}


@pytest.mark.parametrize("name", sorted(FATES))
def test_backbone_fates(name):
    want = FATES[name]
    if want is None:
        vit = create_backbone(name, 5, meta=True)
        PeftViT(vit, SearchSpace())  # the full default space, SSF included
        return
    with pytest.raises(UniTuneError) as info:
        PeftViT(create_backbone(name, 5, meta=True), SearchSpace())
    assert want in str(info.value) and "\n" not in str(info.value)


# ---- dynamic_img_size -------------------------------------------------------------------------------


@pytest.mark.parametrize("img_size,patch", [(32, 8), (384, 16)])
def test_dynamic_img_size_models_train_at_their_built_size(img_size, patch):
    vit = create_backbone("vit_tiny_patch16_224", 5, meta=True,
                          kwargs=dict(img_size=img_size, patch_size=patch, dynamic_img_size=True))
    assert vit.dynamic_img_size
    assert resolve_data_config(vit)["input_size"] == (3, img_size, img_size)


def test_an_architectures_own_input_size_is_accepted():
    """SigLIP so400m/14 at 384 px is built that way by timm and trained that way (27 patches of
    14 px, 6 px dropped); only a size the config chooses must tile the image."""
    vit = create_backbone("vit_so400m_patch14_siglip_384", 5, meta=True)
    assert tuple(vit.patch_embed.img_size) == (384, 384)
    with pytest.raises(UniTuneError, match=r"^model\.kwargs\.img_size: 384 does not fit .*patch size 14"):
        create_backbone("vit_so400m_patch14_siglip_384", 5, meta=True, kwargs={"img_size": 384})
