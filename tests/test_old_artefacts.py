"""Files written by unitune 0.1.0 before the package layers (commit e9367a8) still load, and give
the numbers they gave then: a subnet file, a saved PEFT folder and a merged export.

tests/data/v0_1_0/make.py wrote them with that commit's code (its docstring says how): a tiny ViT's
backbone, every registered method of that time in one subnet with perturbed PEFT weights, and the
logits of that model on a fixed batch. The save has no backbone fingerprint (it predates it), so
loading it says so once and checks nothing more than the recorded tensor names and shapes.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import safetensors.torch
import timm
import torch

import unitune
from unitune.retrain.export import load_export
from unitune.supernet import Subnet

DATA = Path(__file__).parent / "data" / "v0_1_0"
TINY = dict(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4)
SIZES = {"lora": [4, 0, 2, 4], "adapter": [0, 3, 0, 2], "vpt": [2, 0, 0, 1], "ssf": [1, 0, 1, 0], "ssf_global": 1,
         "bitfit": [0, 1, 0, 0], "dora": [0, 2, 0, 0], "adapter_plus": [0, 0, 2, 0]}


def backbone() -> torch.nn.Module:
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, **TINY)
    vit.load_state_dict(safetensors.torch.load_file(str(DATA / "backbone.safetensors")))
    return vit.eval()


def expected() -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(DATA / "expected.safetensors"))


def test_an_old_subnet_file_loads_with_its_sizes():
    subnet = Subnet.load(DATA / "subnet.yaml", depth=4)
    assert subnet.backbone == "vit_tiny_patch16_224"
    assert {m: list(v) if isinstance(v, tuple) else v for m, v in subnet.to_dict()["subnet"].items()} == SIZES


def test_an_old_peft_save_loads_and_gives_its_logits():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = unitune.PeftModel.from_pretrained(backbone(), DATA / "peft")
    assert any("fingerprint" in str(w.message) for w in caught), [str(w.message) for w in caught]
    model.eval()
    e = expected()
    with torch.no_grad():
        logits = model(e["input"])
    torch.testing.assert_close(logits, e["peft_logits"], atol=1e-5, rtol=1e-5)
    # frozen by default (PEFT's from_pretrained): nothing trains until asked
    assert not any(p.requires_grad for p in model.parameters())


def test_an_old_export_loads_and_gives_the_models_logits():
    model, manifest = load_export(DATA / "export")
    e = expected()
    with torch.no_grad():
        logits = model(e["input"])
    torch.testing.assert_close(logits, e["peft_logits"], atol=1e-4, rtol=1e-4)  # merged in float64, stored fp32
    assert manifest["backbone"] == "vit_tiny_patch16_224"
