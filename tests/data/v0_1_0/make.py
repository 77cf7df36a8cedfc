"""Artefacts written by unitune 0.1.0 as of commit e9367a8 (before the package layers of issue 22),
kept so tests/test_old_artefacts.py can check that today's code still reads them.

Run from a checkout of e9367a8:  python tests/data/v0_1_0/make.py tests/data/v0_1_0
Writes: backbone.safetensors (a tiny ViT's weights), subnet.yaml, peft/ (save_pretrained),
export/ (export_model, merged), expected.safetensors (an input batch and each model's logits).
"""

import sys
from pathlib import Path

import safetensors.torch
import timm
import torch

import unitune
from unitune.retrain.export import export_model
from unitune.supernet import Subnet

TINY = dict(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4)
out = Path(sys.argv[1])


def vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, **TINY)


base = vit()
safetensors.torch.save_file({k: v.contiguous() for k, v in base.state_dict().items()}, str(out / "backbone.safetensors"))
sizes = {"lora": [4, 0, 2, 4], "adapter": [0, 3, 0, 2], "vpt": [2, 0, 0, 1], "ssf": [1, 0, 1, 0], "ssf_global": 1,
         "bitfit": [0, 1, 0, 0], "dora": [0, 2, 0, 0], "adapter_plus": [0, 0, 2, 0]}
model = unitune.get_peft_model(vit(), subnet=sizes)
torch.manual_seed(1)
with torch.no_grad():  # trained-looking PEFT weights (zero-initialised ones would hide a wrong load)
    for name, p in model.named_parameters():
        if p.requires_grad:
            p.add_(0.05 * torch.randn_like(p))
model.eval()
Subnet(**sizes, backbone="vit_tiny_patch16_224").save(out / "subnet.yaml", meta={"note": "written by unitune 0.1.0 (e9367a8)"})
torch.manual_seed(2)
x = torch.randn(3, 3, 32, 32)
with torch.no_grad():
    peft_logits = model(x)
unitune.save_pretrained(model, out / "peft")
# The merged export: the methods whose fold into the backbone is exact (adapters and prompts stay as modules).
export_model(out / "export", model, "vit_tiny_patch16_224", model_kwargs=TINY, class_names=list("abcde"))
safetensors.torch.save_file({"input": x, "peft_logits": peft_logits.contiguous()}, str(out / "expected.safetensors"))
