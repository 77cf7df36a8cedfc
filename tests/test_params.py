"""Exact parameter counts: the DESIGN figures for ViT-B/16, formulas, and analytic == materialised."""

from __future__ import annotations

import random

import pytest
import timm
import torch
from tiny import tiny_vit

from unitune.supernet import BackboneDims, PeftViT, SearchSpace, Subnet, count_params


@pytest.fixture(scope="module")
def vit_b_dims() -> BackboneDims:
    with torch.device("meta"):
        return BackboneDims.from_model(timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=100))


@pytest.mark.parametrize(
    "sizes, expected",
    [
        (dict(lora=8), 294_912),  # 4·d·r per block
        (dict(adapter=8), 156_768),  # 2·d·k + k + d per block
        (dict(vpt=10), 92_160),  # p·d per block
        (dict(ssf=1, ssf_global=1), 205_824),  # 22·d per block + 4·d global
    ],
)
def test_vit_b16_figures(vit_b_dims, sizes, expected):
    count = count_params(Subnet.uniform(12, **sizes), vit_b_dims)
    assert count.total == expected
    assert count.head == 768 * 100 + 100
    assert count.with_head == expected + 76_900


def test_formulas_per_block(vit_b_dims):
    d = 768
    s = Subnet.uniform(12, lora=3, adapter=7, vpt=2, ssf=1)
    block = count_params(s, vit_b_dims).per_block[5]
    assert block == {"lora": 4 * d * 3, "adapter": 2 * d * 7 + 7 + d, "vpt": 2 * d, "ssf": 22 * d}


def test_lora_targets_count_their_linears(vit_b_dims):
    d, h = 768, 3072
    space = SearchSpace(lora_targets=("qkv", "proj", "fc1", "fc2"))
    count = count_params(Subnet.uniform(12, lora=2), vit_b_dims, space)
    assert count.total == 12 * 2 * ((d + 3 * d) + (d + d) + (d + h) + (h + d))


def test_vit_b16_forward_and_materialised_count():
    """The one real-size forward: a materialised NOAH-like subnet on ViT-B/16 (random init)."""
    torch.manual_seed(0)
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=10)
    subnet = Subnet((1, 5, 10) * 4, (10, 0, 5) * 4, (0, 5, 1) * 4, (1, 0, 0) * 4, 1)
    model = PeftViT(vit, SearchSpace(), sizes=subnet).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 10) and torch.isfinite(out).all()
    materialised = sum(p.numel() for _, p in model.peft_named_parameters())
    assert materialised == count_params(subnet, BackboneDims.from_model(model)).total


@pytest.mark.parametrize("variant_name", ["cls", "reg_layerscale", "avgpool_noclass", "no_qkv_bias"])
def test_analytic_equals_materialised_for_random_subnets(variant_name):
    space = SearchSpace(lora=(0, 1, 3, 8), adapter=(0, 2, 5), vpt=(0, 1, 4), lora_targets=("qkv", "fc1", "fc2"))
    supernet = PeftViT(tiny_vit(variant_name), space)
    dims = BackboneDims.from_model(supernet)
    rng = random.Random(variant_name)
    for _ in range(10):
        s = Subnet(*(tuple(rng.choice(space.choices(m)) for _ in range(4)) for m in ("lora", "adapter", "vpt", "ssf")),
                   ssf_global=rng.choice((0, 1)))
        small = supernet.materialize(s)
        counted = count_params(s, dims, space)
        assert sum(p.numel() for _, p in small.peft_named_parameters()) == counted.total
        per_method = {m: 0 for m in counted.per_method}
        for name, p in small.peft_named_parameters():
            method = "ssf" if name.startswith("ssf_global") else name.split(".")[2]
            per_method[method] += p.numel()
        assert per_method == counted.per_method
        assert sum(p.numel() for p in small.head.parameters()) == counted.head
