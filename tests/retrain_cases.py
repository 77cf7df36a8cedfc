"""Shared cases for the merge and export tests: the tiny-ViT matrix and the method mixes."""

from __future__ import annotations

import pytest
import timm
import torch

from unitune.supernet import PeftViT, SearchSpace, Subnet

BACKBONE = "vit_tiny_patch16_224"
TINY = dict(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4)
NUM_CLASSES = 5
VARIANTS = {
    "plain": {},
    "reg_layerscale": dict(reg_tokens=2, init_values=0.1),
    "avgpool": dict(class_token=False, global_pool="avg"),
    "no_qkv_bias": dict(qkv_bias=False),
}

# Non-uniform per-block sizes (depth 4), including off blocks.
Z = (0, 0, 0, 0)
LORA, ADAPTER, VPT, SSF = (4, 0, 2, 1), (2, 0, 4, 2), (3, 1, 0, 1), (1, 0, 1, 1)
# mix -> (subnet, adapter style)
MIXES = {
    "lora": (Subnet(LORA, Z, Z, Z, 0), "sequential"),
    "ssf": (Subnet(Z, Z, Z, SSF, 1), "sequential"),
    "lora_ssf": (Subnet(LORA, Z, Z, SSF, 1), "sequential"),
    "adapter_seq": (Subnet(Z, ADAPTER, Z, Z, 0), "sequential"),
    "adapter_par": (Subnet(Z, ADAPTER, Z, Z, 0), "parallel"),
    "vpt": (Subnet(Z, Z, VPT, Z, 0), "sequential"),
    "all": (Subnet(LORA, ADAPTER, VPT, SSF, 1), "parallel"),
}
MERGEABLE = {"lora", "ssf", "lora_ssf"}


def space(style: str = "sequential") -> SearchSpace:
    return SearchSpace(
        lora=(0, 1, 2, 4), adapter=(0, 2, 4), vpt=(0, 1, 3),
        lora_targets=("qkv", "proj", "fc1", "fc2"), lora_scale=0.5,
        adapter_style=style, adapter_scale=0.7,
    )


def tiny_kwargs(variant: str, **extra) -> dict:
    return dict(TINY, **VARIANTS[variant], **extra)


def tiny_vit(variant: str = "plain", seed: int = 0, **extra):
    torch.manual_seed(seed)
    return timm.create_model(BACKBONE, pretrained=False, num_classes=NUM_CLASSES, **tiny_kwargs(variant, **extra))


@torch.no_grad()
def perturb(model: PeftViT, seed: int = 1, std: float = 0.2) -> None:
    """Random non-zero PEFT weights and head, so every fold has something to get wrong."""
    g = torch.Generator().manual_seed(seed)
    for _, p in model.trainable_named_parameters():
        p.add_(torch.randn(p.shape, generator=g) * std)


def supernet(variant: str, mix: str, **extra) -> PeftViT:
    """A supernet (largest sizes everywhere) with noisy weights, set to the mix's subnet, eval mode."""
    subnet, style = MIXES[mix]
    model = PeftViT(tiny_vit(variant, **extra), space(style))
    perturb(model)
    model.set_subnet(subnet)
    return model.eval()


def images(n: int = 3, seed: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def one_thread():
    """Tiny models run faster on one thread, and far faster when other processes share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
