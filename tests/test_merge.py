"""Merging LoRA and SSF into the backbone: exact logits, an untouched input, plain timm structure."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from unitune.errors import UniTuneError
from unitune.supernet.merge import merge
from unitune.supernet.methods.fold import fold_scale_shift
from unitune.supernet import BackboneDims, PeftViT, Subnet, count_params
from unitune.supernet.methods.adapter import MlpAdapter
from unitune.supernet.methods.layers import PeftLayer
from unitune.supernet.methods.vpt import PromptedBlock

from retrain_cases import (  # noqa: F401  (one_thread is a fixture)
    BACKBONE, MERGEABLE, MIXES, NUM_CLASSES, VARIANTS, images, one_thread, supernet, tiny_kwargs, tiny_vit,
)

pytestmark = pytest.mark.usefixtures("one_thread")

ATOL = 1e-5
CASES = [(v, m) for v in VARIANTS for m in MIXES]


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("variant,mix", CASES)
def test_merged_matches_unmerged(variant, mix):
    model = supernet(variant, mix)
    x = images()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        expected = model(x)
        plain = model.backbone().eval()(x)
    merged = merge(model)
    with torch.no_grad():
        got = merged.model(x)
    # The PEFT weights change the logits a lot, so agreeing to 1e-5 is a real check.
    assert (expected - plain).abs().max() > 0.01
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)

    # The input model is untouched: same weights, same subnet, same logits.
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert model.subnet == MIXES[mix][0]
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, atol=0, rtol=0)

    assert not merged.model.training
    assert not any(p.requires_grad for p in merged.model.parameters())
    assert merged.subnet == MIXES[mix][0]
    assert not set(p.data_ptr() for p in merged.model.parameters()) & set(p.data_ptr() for p in model.parameters())


@pytest.mark.parametrize("variant,mix", CASES)
def test_merged_structure_and_param_counts(variant, mix):
    model = supernet(variant, mix)
    subnet = model.subnet
    merged = merge(model)
    peft = [m for m in merged.model.modules() if isinstance(m, PeftLayer)]
    needs_qkv_bias = variant == "no_qkv_bias" and any(subnet.ssf)
    assert merged.model_kwargs == ({"qkv_bias": True} if needs_qkv_bias else {})
    assert merged.added_params == ()
    dims = BackboneDims.from_model(model)
    if mix in MERGEABLE:
        assert type(merged.model) is VisionTransformer and merged.is_plain_timm and peft == []
        # Same count as timm builds with the recorded overrides, and as the backbone plus the
        # qkv biases a merge had to create (3·d per block).
        rebuilt = timm.create_model(BACKBONE, num_classes=NUM_CLASSES, **{**tiny_kwargs(variant), **merged.model_kwargs})
        assert n_params(merged.model) == n_params(rebuilt)
        assert n_params(merged.model) == n_params(model.backbone()) + (4 * 3 * 64 if needs_qkv_bias else 0)
    else:
        assert isinstance(merged.model, PeftViT) and not merged.is_plain_timm
        assert merged.unmerged == Subnet((0,) * 4, subnet.adapter, subnet.vpt, (0,) * 4, 0)
        # Only Adapter / VPT layers remain, each allocated at exactly its chosen size.
        assert peft and all(isinstance(m, (MlpAdapter, PromptedBlock)) for m in peft)
        assert all(m.size == m.max_size for m in peft)
        kept = sum(p.numel() for _, p in merged.model.peft_named_parameters())
        trained = count_params(subnet, dims, model.space).per_method
        assert kept == count_params(merged.unmerged, dims, model.space).total == trained["adapter"] + trained["vpt"]
        assert kept > 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_pure_timm_result_loads_strictly(variant):
    model = supernet(variant, "lora_ssf")
    merged = merge(model)
    vit = timm.create_model(BACKBONE, pretrained=False, num_classes=NUM_CLASSES, **{**tiny_kwargs(variant), **merged.model_kwargs})
    vit.load_state_dict(merged.model.state_dict(), strict=True)
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(vit.eval()(x), merged.model(x), atol=0, rtol=0)
        torch.testing.assert_close(vit(x), model(x), atol=ATOL, rtol=0)


def test_merge_from_materialized_equals_merge_from_supernet():
    model = supernet("reg_layerscale", "all")
    x = images()
    materialized = model.materialize().eval()
    dims = BackboneDims.from_model(model)
    assert sum(p.numel() for _, p in materialized.peft_named_parameters()) == count_params(model.subnet, dims, model.space).total
    a, b = merge(model), merge(materialized)
    assert a.model.state_dict().keys() == b.model.state_dict().keys()
    with torch.no_grad():
        torch.testing.assert_close(a.model(x), b.model(x), atol=0, rtol=0)


def test_ssf_on_some_blocks_without_qkv_bias_gets_zero_biases_elsewhere():
    model = supernet("no_qkv_bias", "ssf")  # SSF in blocks 0, 2, 3 only
    merged = merge(model)
    q = merged.model.blocks[1].attn.qkv
    assert q.bias is not None and torch.count_nonzero(q.bias) == 0
    assert torch.count_nonzero(merged.model.blocks[0].attn.qkv.bias) > 0


def test_global_ssf_folds_into_the_head_without_a_final_norm():
    # final_norm=False: neither norm nor fc_norm exists, so the closing SSF folds into the head.
    model = supernet("avgpool", "lora_ssf", final_norm=False)
    assert "ssf_global.fc_norm" in model.named_layers
    x = images()
    merged = merge(model)
    with torch.no_grad():
        torch.testing.assert_close(merged.model(x), model(x), atol=ATOL, rtol=0)
    assert merged.is_plain_timm


def test_patch_embed_conv_without_bias_gets_one_and_is_recorded():
    # pre_norm=True builds the patch-embed conv without bias; no timm keyword adds it back.
    model = supernet("plain", "ssf", pre_norm=True)
    assert model.vit.patch_embed.proj.bias is None
    x = images()
    merged = merge(model)
    with torch.no_grad():
        torch.testing.assert_close(merged.model(x), model(x), atol=ATOL, rtol=0)
    assert merged.added_params == ("patch_embed.proj.bias",)
    assert not merged.is_plain_timm


def test_global_ssf_folds_into_a_patch_embed_layernorm():
    vit = tiny_vit("plain")
    vit.patch_embed.norm = nn.LayerNorm(64)
    model = PeftViT(vit, supernet("plain", "ssf").space)
    model.set_subnet(Subnet.uniform(4, ssf_global=1))
    with torch.no_grad():
        model.named_layers["ssf_global.patch_embed"].ssf_shift.add_(0.5)
        model.named_layers["ssf_global.patch_embed"].ssf_scale.mul_(1.5)
    model.eval()
    merged = merge(model)
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(merged.model(x), model(x), atol=ATOL, rtol=0)
        torch.testing.assert_close(merged.model.patch_embed.norm.bias, torch.full((64,), 0.5))
    assert merged.added_params == ()


def test_fold_into_layernorm_without_affine_creates_weight_and_bias():
    norm = nn.LayerNorm(8, elementwise_affine=False)
    scale, shift = torch.rand(8) + 0.5, torch.randn(8)
    x = torch.randn(4, 8)
    expected = norm(x) * scale + shift
    with torch.no_grad():
        created = fold_scale_shift(norm, scale, shift)
    assert created == ["weight", "bias"]
    assert norm.weight.dtype == torch.float32
    torch.testing.assert_close(norm(x), expected, atol=1e-6, rtol=0)


def test_fold_into_linear_without_bias_and_conv():
    lin = nn.Linear(6, 4, bias=False)
    conv = nn.Conv2d(3, 4, 2, stride=2)
    scale, shift = torch.rand(4) + 0.5, torch.randn(4)
    x, img = torch.randn(5, 6), torch.randn(2, 3, 4, 4)
    want_lin = lin(x) * scale + shift
    want_conv = conv(img) * scale.view(-1, 1, 1) + shift.view(-1, 1, 1)
    with torch.no_grad():
        assert fold_scale_shift(lin, scale, shift) == ["bias"]
        assert fold_scale_shift(conv, scale, shift) == []
    torch.testing.assert_close(lin(x), want_lin, atol=1e-6, rtol=0)
    torch.testing.assert_close(conv(img), want_conv, atol=1e-6, rtol=0)


def test_bad_inputs():
    with pytest.raises(UniTuneError, match="merge: expected a PeftViT, got VisionTransformer"):
        merge(tiny_vit())
    with pytest.raises(UniTuneError, match="cannot fold SSF into a GELU"):
        fold_scale_shift(nn.GELU(), torch.ones(3), torch.zeros(3))
