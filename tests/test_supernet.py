"""The supernet: injection into timm ViTs, the active subnet, gradients, materialisation."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from unitune.errors import UniTuneError
from unitune.supernet import PeftViT, SearchSpace, Subnet
from unitune.supernet.guard import InactiveGuard, active_masks
from unitune.supernet.methods.vpt import PromptedBlock

from tiny import tiny_vit

ALL_TARGETS = SearchSpace(lora_targets=("qkv", "proj", "fc1", "fc2"))
DEPTH = 4


def perturb(model: PeftViT, scale: float = 0.2, seed: int = 0) -> None:
    """Give every PEFT parameter non-trivial values (B and up start at zero, SSF at identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.peft_named_parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def random_subnet(space: SearchSpace, rng: random.Random, depth: int = DEPTH) -> Subnet:
    pick = lambda m: tuple(rng.choice(space.choices(m)) for _ in range(depth))  # noqa: E731
    return Subnet(pick("lora"), pick("adapter"), pick("vpt"), pick("ssf"), rng.choice(space.ssf_global))


def test_empty_subnet_gives_plain_timm_logits(variant, images):
    plain = tiny_vit(variant).eval()
    model = PeftViT(copy.deepcopy(plain), ALL_TARGETS).eval()
    perturb(model)  # even with trained PEFT weights, size 0 must take every layer out
    model.set_subnet(Subnet.uniform(DEPTH))
    with torch.no_grad():
        diff = (model(images) - plain(images)).abs().max().item()
    assert diff <= 1e-6


@pytest.mark.parametrize(
    "sizes", [dict(lora=5), dict(adapter=5), dict(vpt=5), dict(ssf=1), dict(ssf_global=1)], ids=lambda d: next(iter(d))
)
def test_each_method_alone_changes_logits(variant, images, sizes):
    model = PeftViT(tiny_vit(variant), ALL_TARGETS).eval()
    perturb(model)
    with torch.no_grad():
        model.set_subnet(Subnet.uniform(DEPTH))
        base = model(images)
        model.set_subnet(Subnet.uniform(DEPTH, **sizes))
        out = model(images)
    assert (out - base).abs().max().item() > 1e-3


def test_adapter_styles_differ(images):
    outs = []
    for style in ("sequential", "parallel"):
        model = PeftViT(tiny_vit(), SearchSpace(adapter_style=style)).eval()
        perturb(model)
        model.set_subnet(Subnet.uniform(DEPTH, adapter=5))
        with torch.no_grad():
            outs.append(model(images))
    assert (outs[0] - outs[1]).abs().max().item() > 1e-4


def test_only_peft_and_head_are_trainable(variant):
    model = PeftViT(tiny_vit(variant), ALL_TARGETS)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    expected = {id(p) for _, p in model.trainable_named_parameters()}
    assert trainable == expected
    head = {id(p) for p in model.head.parameters()}
    assert head <= trainable
    backbone = model.backbone()
    n_backbone = sum(p.numel() for p in backbone.parameters()) - sum(p.numel() for p in model.head.parameters())
    n_frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert n_frozen == n_backbone


def test_gradients_reach_exactly_the_active_weights(variant, images):
    model = PeftViT(tiny_vit(variant), ALL_TARGETS)
    perturb(model)
    subnet = Subnet((1, 5, 0, 10), (10, 0, 1, 5), (5, 1, 10, 0), (1, 0, 1, 1), 1)
    model.set_subnet(subnet)
    model(images).logsumexp(-1).sum().backward()
    masks = active_masks(model)
    params = dict(model.peft_named_parameters())
    for name, p in params.items():
        mask = masks[name]
        if not mask.any():
            assert p.grad is None or not p.grad.any(), name
            continue
        assert p.grad is not None, f"{name} got no gradient"
        # every active entry of an active layer gets gradient signal (non-zero somewhere in each row)
        active_grad = p.grad[mask]
        assert active_grad.abs().sum() > 0, name
        assert not p.grad[~mask].any(), f"{name}: gradient outside the active slice"
    for name, p in model.vit.named_parameters():
        if not p.requires_grad:
            assert p.grad is None, f"frozen {name} received a gradient"


def test_optimizer_step_leaves_inactive_slices_untouched(images):
    model = PeftViT(tiny_vit(), ALL_TARGETS)
    perturb(model)
    subnet = Subnet((1, 5, 0, 10), (10, 0, 1, 5), (5, 1, 10, 0), (1, 0, 1, 1), 0)
    model.set_subnet(subnet)
    opt = torch.optim.AdamW([p for _, p in model.trainable_named_parameters()], lr=1e-2, weight_decay=0.1)
    guard = InactiveGuard(model, opt)
    before = {n: p.detach().clone() for n, p in model.peft_named_parameters()}
    masks = active_masks(model)
    # two steps on different subnets leave momentum behind; the guard must still hold
    for s in (Subnet.largest(ALL_TARGETS, DEPTH), subnet):
        model.set_subnet(s)
        masks = active_masks(model)
        before = {n: p.detach().clone() for n, p in model.peft_named_parameters()}
        opt.zero_grad()
        model(images).logsumexp(-1).sum().backward()
        opt.step()
    moved = 0
    for name, p in model.peft_named_parameters():
        assert torch.equal(p[~masks[name]], before[name][~masks[name]]), f"{name} changed outside the subnet"
        moved += int((p[masks[name]] != before[name][masks[name]]).any())
    assert moved > 0
    # without the guard, weight decay alone moves the inactive slices: the guard is what holds them
    guard.remove()
    opt.zero_grad()
    model(images).logsumexp(-1).sum().backward()
    opt.step()
    changed = [n for n, p in model.peft_named_parameters() if not torch.equal(p[~masks[n]], before[n][~masks[n]])]
    assert changed


def test_supernet_equals_materialised_subnet(variant, images):
    model = PeftViT(tiny_vit(variant), ALL_TARGETS).eval()
    perturb(model)
    rng = random.Random(0)
    for _ in range(3):
        subnet = random_subnet(ALL_TARGETS, rng)
        model.set_subnet(subnet)
        small = model.materialize(subnet).eval()
        for name, p in small.peft_named_parameters():  # exactly the chosen sizes, no super-size tensor
            layer = small.named_layers[name.rsplit(".", 1)[0]]
            assert p.shape == layer.active_shape(name.rsplit(".", 1)[1], layer.max_size)
        with torch.no_grad():
            assert torch.allclose(model(images), small(images), atol=1e-6, rtol=0)


def test_materialised_model_has_no_layer_for_size_zero():
    model = PeftViT(tiny_vit(), ALL_TARGETS)
    small = model.materialize(Subnet((0, 5, 0, 0), (0, 0, 0, 0), (0, 0, 0, 1), (0, 0, 0, 0), 0))
    assert sorted(small.named_layers) == ["blocks.1.lora.fc1", "blocks.1.lora.fc2", "blocks.1.lora.proj",
                                          "blocks.1.lora.qkv", "blocks.3.vpt"]
    assert small.named_layers["blocks.1.lora.qkv"].lora_A.shape == (5, 64)
    assert small.named_layers["blocks.3.vpt"].prompts.shape == (1, 64)


def test_prompts_never_reach_pooling_and_prefix_tokens_keep_places(variant, images):
    vit = tiny_vit(variant)
    n_prefix, n_patches = vit.num_prefix_tokens, vit.patch_embed.num_patches
    model = PeftViT(vit, ALL_TARGETS).eval()
    perturb(model)
    model.set_subnet(Subnet((3, 0, 0, 5), (0,) * 4, (10, 1, 0, 5), (0,) * 4, 0))
    seen: dict[str, list] = {"block_in": [], "block_out": [], "final": []}
    for i, block in enumerate(model.vit.blocks):
        if isinstance(block, PromptedBlock) and block.size:
            block.block.register_forward_pre_hook(lambda m, a, i=i: seen["block_in"].append((i, a[0].detach())))
        block.register_forward_pre_hook(lambda m, a, i=i: seen["block_out"].append((i, a[0].detach())))
    final = model.vit.norm if n_prefix else model.vit.fc_norm
    model.vit.norm.register_forward_pre_hook(lambda m, a: seen["final"].append(a[0].detach()))
    with torch.no_grad():
        model(images)
    # every block boundary (and the final norm, hence pooling and head) sees only real tokens
    for _, x in seen["block_out"]:
        assert x.shape[1] == n_prefix + n_patches
    assert seen["final"][0].shape[1] == n_prefix + n_patches
    assert final is not None
    # inside a prompted block: prefix tokens first, then the prompts, then the patches
    inputs = dict(seen["block_out"])
    for i, x in seen["block_in"]:
        p = model.vit.blocks[i].size
        prompts = model.vit.blocks[i].prompts[:p]
        assert x.shape[1] == n_prefix + p + n_patches
        assert torch.equal(x[:, :n_prefix], inputs[i][:, :n_prefix])
        assert torch.equal(x[:, n_prefix:n_prefix + p], prompts.expand(x.shape[0], -1, -1))
        assert torch.equal(x[:, n_prefix + p:], inputs[i][:, n_prefix:])


def test_no_randomness_in_forward(images):
    model = PeftViT(tiny_vit(), ALL_TARGETS).eval()
    perturb(model)
    model.set_subnet(Subnet((1, 5, 0, 10), (10, 0, 1, 5), (5, 1, 10, 0), (1, 0, 1, 1), 1))
    with torch.no_grad():
        torch.manual_seed(1)
        a = model(images)
        torch.manual_seed(2)
        b = model(images)
    assert torch.equal(a, b)


def test_trainable_state_dict_round_trip(images):
    model = PeftViT(tiny_vit(), ALL_TARGETS).eval()
    perturb(model)
    model.set_subnet(Subnet((1, 5, 0, 10), (10, 0, 1, 5), (5, 1, 10, 0), (1, 0, 1, 1), 1))
    state = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    assert "head.weight" in state and "blocks.0.lora.qkv.lora_A" in state
    other = PeftViT(tiny_vit(seed=0), ALL_TARGETS).eval()
    other.set_subnet(model.subnet)
    other.load_trainable_state_dict(state)
    with torch.no_grad():
        assert torch.equal(model(images), other(images))
    state.pop("head.weight")
    with pytest.raises(UniTuneError, match="missing"):
        other.load_trainable_state_dict(state, source="ckpt.safetensors")


def test_subnet_beyond_capacity_is_rejected():
    model = PeftViT(tiny_vit(), ALL_TARGETS)
    small = model.materialize(Subnet.uniform(DEPTH, lora=1))
    with pytest.raises(UniTuneError, match=r"lora\[0\] = 5 exceeds"):
        small.set_subnet(Subnet.uniform(DEPTH, lora=5))
    with pytest.raises(UniTuneError, match="4 blocks"):
        model.set_subnet(Subnet.uniform(3))


def test_map_pooling_and_avg_pooling_work(images):
    for kw in (dict(global_pool="map"), dict(class_token=False, global_pool="avg", fc_norm=True)):
        plain = tiny_vit(**kw).eval()
        model = PeftViT(copy.deepcopy(plain), ALL_TARGETS).eval()
        model.set_subnet(Subnet.uniform(DEPTH))
        with torch.no_grad():
            assert (model(images) - plain(images)).abs().max() <= 1e-6
        perturb(model)
        small = model.materialize(Subnet.largest(ALL_TARGETS, DEPTH)).eval()
        model.set_subnet(Subnet.largest(ALL_TARGETS, DEPTH))
        with torch.no_grad():
            assert torch.allclose(model(images), small(images), atol=1e-6, rtol=0)


def test_not_a_vit_is_rejected():
    import timm

    with pytest.raises(UniTuneError, match="is not a timm VisionTransformer"):
        PeftViT(timm.create_model("resnet18", pretrained=False, num_classes=3), SearchSpace())
