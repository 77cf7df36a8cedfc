"""New parameters take the device and dtype of what they replace (issue 14).

``materialize`` and ``merge`` build new PEFT layers; they used to create them with
``torch.empty/zeros/ones`` on the CPU whatever the model's device, so ``retrain --init supernet``
on a GPU crashed at its first forward pass. The meta device stands in for CUDA here (no GPU on
the test machine): a tensor left on the CPU shows as ``cpu`` just as it would next to a GPU model.
bfloat16 stands in for any non-default dtype.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from unitune.engine.config import load_run_config
from unitune.supernet.merge import merge
from unitune.engine.subnet_model import build_subnet_model
from unitune.supernet import PeftViT, Subnet
from unitune.supernet.store import save_supernet

from retrain_cases import MIXES, images, perturb, space, tiny_kwargs, tiny_vit

META = torch.device("meta")


def placement(module: torch.nn.Module) -> set[tuple[str, torch.dtype]]:
    """Every (device type, dtype) of the module's floating-point parameters and buffers."""
    tensors = [*module.parameters(), *module.buffers()]
    return {(t.device.type, t.dtype) for t in tensors if t.is_floating_point()}


def supernet_on(device: torch.device | str, dtype: torch.dtype = torch.float32, variant: str = "plain",
                mix: str = "all") -> PeftViT:
    subnet, style = MIXES[mix]
    model = PeftViT(tiny_vit(variant), space(style))
    perturb(model)
    model.set_subnet(subnet)
    return model.to(device=device, dtype=dtype).eval()


@pytest.mark.parametrize("mix", ["all", "adapter_par", "vpt"])
def test_materialize_keeps_the_model_device(mix):
    model = supernet_on(META, mix=mix)
    assert placement(model) == {("meta", torch.float32)}
    sub = model.materialize()
    assert placement(sub) == {("meta", torch.float32)}
    assert sub(images().to(META)).shape == (3, 5)  # runs where the model is


def test_materialize_and_merge_keep_the_dtype():
    model = supernet_on("cpu", torch.bfloat16, variant="no_qkv_bias")
    sub = model.materialize()
    assert placement(sub) == {("cpu", torch.bfloat16)}
    merged = merge(sub)
    assert placement(merged.model) == {("cpu", torch.bfloat16)}
    assert merged.model_kwargs == {"qkv_bias": True}  # the merge created qkv biases (in bfloat16 too)
    with torch.no_grad():
        merged.model(images().to(torch.bfloat16))


@pytest.mark.parametrize("mix", ["all", "lora_ssf", "adapter_seq"])
def test_merge_keeps_the_model_device(mix):
    model = supernet_on(META, variant="no_qkv_bias", mix=mix)
    merged = merge(model)
    assert placement(merged.model) == {("meta", torch.float32)}
    assert merged.model(images().to(META)).shape == (3, 5)


def test_merge_creates_norm_params_on_the_model_device():
    """A final norm without affine parameters gets them from the merge, on the model's device."""
    model = PeftViT(tiny_vit(), space())
    model.vit.norm = torch.nn.LayerNorm(64, elementwise_affine=False)
    model = PeftViT(model.backbone(), space())  # re-inject around the affine-free norm
    perturb(model)
    model.set_subnet(Subnet.uniform(4, ssf_global=1))
    model = model.to(META)
    merged = merge(model)
    assert {"norm.weight", "norm.bias"} <= set(merged.added_params)
    assert merged.vit.norm.weight.device.type == "meta"


def test_retrain_init_supernet_builds_the_subnet_on_the_run_device(tmp_path: Path):
    """``unitune retrain --init supernet``'s model construction, asked for the (meta) device."""
    cfg = {"name": "dev", "device": "cpu",
           "model": {"backbone": "vit_tiny_patch16_224", "kwargs": tiny_kwargs("plain")},
           "data": {"source": "synthetic", "num_classes": 5, "samples_per_class": 2, "image_size": 32,
                    "batch_size": 2, "num_workers": 0},
           "space": {"lora": [0, 1, 2, 4], "adapter": [0, 2, 4], "vpt": [0, 1, 3],
                     "lora_targets": ["qkv", "proj", "fc1", "fc2"], "lora_scale": 0.5, "adapter_scale": 0.7}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = load_run_config(path)
    trained = PeftViT(tiny_vit("plain"), space())
    perturb(trained)
    meta = {"backbone": "vit_tiny_patch16_224", "model": run.section("model"), "num_classes": 5,
            "data_config": {"input_size": [3, 32, 32]}}
    save_supernet(tmp_path / "supernet.safetensors", trained, meta)
    subnet = MIXES["all"][0]
    model = build_subnet_model(run, subnet, 5, META, tmp_path, "supernet", tmp_path / "supernet.safetensors")
    assert model.subnet == subnet and model.capacity == subnet
    assert placement(model) == {("meta", torch.float32)}
    assert model(images().to(META)).shape == (3, 5)
