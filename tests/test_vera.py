"""VeRA (supernet/methods/vera.py): the method added through the contract alone (one file plus a
registration line); the common matrix (tests/test_methods_matrix.py) covers it too. Here: the
count against the paper's formula ``r + out`` per adapted linear, identity at init, merge after a
training step, and the model-level shared matrices (buffers, one storage per shape, prefixes
independent of the largest rank, rebuilt from the recorded seed)."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from tiny import tiny_vit

from unitune.errors import UniTuneError
from unitune.supernet.merge import merge
from unitune.supernet import BackboneDims, PeftViT, SearchSpace, Subnet, count_params
from unitune.supernet.guard import InactiveGuard
from unitune.supernet.methods.vera import D_INIT, VeRALinear, random_pair

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

DEPTH = 4
OFF = dict(lora=(0,), adapter=(0,), vpt=(0,), ssf=(0,), ssf_global=(0,))


def vera_space(ranks=(0, 2, 4), targets=("qkv",), seed=0) -> SearchSpace:
    return SearchSpace(**OFF, vera=ranks, vera_targets=list(targets), vera_seed=seed)


def peft_numel(model: PeftViT) -> int:
    return sum(p.numel() for _, p in model.peft_named_parameters())


def images(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def vera_layers(model: PeftViT) -> list[VeRALinear]:
    return [layer for layer in model.named_layers.values() if isinstance(layer, VeRALinear)]


def test_count_is_r_plus_out_per_linear_on_a_tiny_vit():
    d = 64  # tiny: qkv 64 -> 192, proj 64 -> 64, fc1 64 -> 256, fc2 256 -> 64
    space = vera_space(targets=("qkv", "proj", "fc1", "fc2"))
    model = PeftViT(tiny_vit(), space)
    subnet = Subnet.uniform(DEPTH).replace(vera=(4, 0, 2, 4))
    small = model.materialize(subnet)
    per_block = {r: (r + 3 * d) + (r + d) + (r + 4 * d) + (r + d) for r in (0, 2, 4)}
    per_block[0] = 0
    want = per_block[4] + per_block[0] + per_block[2] + per_block[4]
    assert peft_numel(small) == want == count_params(subnet, BackboneDims.from_model(model), space).total
    assert peft_numel(model) == DEPTH * per_block[4]
    # only the vectors train: the frozen matrices are no parameters of any layer
    assert {n.rsplit(".", 1)[1] for n, _ in small.peft_named_parameters()} == {"vera_d", "vera_b"}


def test_count_is_r_plus_out_per_linear_on_vit_base():
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=10)
    space = SearchSpace(**OFF, vera=(0, 8))
    model = PeftViT(vit, space)
    want = 12 * (8 + 3 * 768)  # qkv only (the default target): r + out per block
    assert peft_numel(model) == want == 27_744
    assert count_params(Subnet.largest(space, 12), BackboneDims.from_model(model), space).total == want
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == want + 768 * 10 + 10  # and the head


def test_output_is_the_backbones_at_init():
    plain = tiny_vit().eval()
    model = PeftViT(copy.deepcopy(plain), vera_space(targets=("qkv", "fc1"))).eval()
    for layer in vera_layers(model):
        assert torch.equal(layer.vera_b, torch.zeros_like(layer.vera_b))
        assert torch.equal(layer.vera_d, torch.full_like(layer.vera_d, D_INIT))
    with torch.no_grad():
        assert torch.equal(model(images()), plain(images()))


def test_merged_equals_unmerged_after_a_training_step():
    model = PeftViT(tiny_vit(), vera_space(targets=("qkv", "proj", "fc1", "fc2")))
    model.set_subnet(Subnet.uniform(DEPTH).replace(vera=(4, 2, 0, 4)))
    optimizer = torch.optim.AdamW([p for _, p in model.trainable_named_parameters()], lr=1e-2)
    x, y = images(8), torch.arange(8) % 5
    for _ in range(2):  # b is zero at init, so d's gradient is zero in the first step: two steps
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    layer = model.named_layers["blocks.0.vera.qkv"]
    assert layer.vera_b.abs().max() > 0 and (layer.vera_d - D_INIT).abs().max() > 0  # it trained
    model.eval()
    merged = merge(model)
    assert not isinstance(merged.model, PeftViT)  # folded into plain timm linears
    with torch.no_grad():
        want = model(x)
        torch.testing.assert_close(merged.model(x), want, atol=1e-5, rtol=0)
        assert (want - model.backbone().eval()(x)).abs().max() > 1e-4  # the update is not vacuous


def test_shared_matrices_are_buffers_shared_by_every_layer_of_a_shape():
    model = PeftViT(tiny_vit(), vera_space(targets=("qkv", "proj")))
    shared = model.shared["vera"]
    names = {n for n, _ in model.named_buffers() if ".vera" in n or n.startswith("shared.")}
    assert names == {"shared.vera.A_64x192", "shared.vera.B_64x192", "shared.vera.A_64x64", "shared.vera.B_64x64"}
    assert not any(n.startswith("shared.") for n, _ in model.named_parameters())
    assert not any(k.startswith("shared.") for k in model.state_dict())  # rebuilt from the seed, not saved
    for dtype in (None, torch.float64):  # .to() moves the one copy: the layers still share it
        if dtype is not None:
            model.to(dtype)
        qkv = [model.named_layers[f"blocks.{i}.vera.qkv"].shared_pair() for i in range(DEPTH)]
        assert all(a.data_ptr() == qkv[0][0].data_ptr() and b.data_ptr() == qkv[0][1].data_ptr() for a, b in qkv)
        assert qkv[0][0].data_ptr() == shared.A_64x192.data_ptr() and qkv[0][0].dtype == (dtype or torch.float32)
        proj = model.named_layers["blocks.0.vera.proj"].shared_pair()
        assert proj[0].shape == (4, 64) and proj[1].shape == (64, 4)
        assert proj[0].data_ptr() != qkv[0][0].data_ptr()
    # a deep copy shares within itself, not with the original
    twin = copy.deepcopy(model)
    a0, a1 = (twin.named_layers[f"blocks.{i}.vera.qkv"].shared_pair()[0] for i in (0, 1))
    assert a0.data_ptr() == a1.data_ptr() == twin.shared["vera"].A_64x192.data_ptr() != shared.A_64x192.data_ptr()
    # methods without a model-level hook keep nothing there
    assert len(PeftViT(tiny_vit(), SearchSpace(lora=(0, 2))).shared) == 0


def test_a_rank_prefix_does_not_depend_on_the_largest_rank_and_the_seed_rebuilds_it():
    a8, b8 = random_pair(3, 64, 192, 8)
    a2, b2 = random_pair(3, 64, 192, 2)
    assert torch.equal(a8[:2], a2) and torch.equal(b8[:, :2], b2)
    assert not torch.equal(random_pair(4, 64, 192, 2)[0], a2)  # another seed, other matrices
    # a materialised subnet (largest rank 2) sees the supernet's (largest rank 4) first rows
    space = vera_space(seed=3)
    model = PeftViT(tiny_vit(), space)
    small = model.materialize(Subnet.uniform(DEPTH, vera=2))
    a_big, _ = model.named_layers["blocks.0.vera.qkv"].shared_pair()
    a_small, _ = small.named_layers["blocks.0.vera.qkv"].shared_pair()
    assert a_small.shape == (2, 64) and torch.equal(a_small, a_big[:2])
    assert space.to_dict()["vera_seed"] == 3 and SearchSpace.from_dict(space.to_dict()) == space


def test_the_guard_keeps_the_idle_part_of_d():
    model = PeftViT(tiny_vit(), vera_space())
    model.set_subnet(Subnet.uniform(DEPTH, vera=2))
    optimizer = torch.optim.AdamW([p for _, p in model.trainable_named_parameters()], lr=1e-2, weight_decay=0.1)
    guard = InactiveGuard(model, optimizer)
    layer = model.named_layers["blocks.0.vera.qkv"]
    for _ in range(2):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images(4)), torch.arange(4)).backward()
        optimizer.step()
    guard.remove()
    assert torch.equal(layer.vera_d[2:], torch.full((2,), D_INIT))
    assert (layer.vera_d[:2] - D_INIT).abs().max() > 0


@pytest.mark.parametrize("seed", [-1, 2 ** 31, 1.5, True, "0"])
def test_a_bad_seed_is_one_line(seed):
    with pytest.raises(UniTuneError, match=r"^space\.vera_seed: expected an integer seed in \[0, 2\*\*31\), got "):
        SearchSpace(vera=(0, 2), vera_seed=seed)



def test_the_largest_seed_builds_its_matrices():
    """Every accepted seed seeds the generator (64 bits): the largest one gave an overflow traceback;
    two seeds still give two different pairs."""
    from unitune.supernet.methods.vera import random_pair

    a, b = random_pair(2 ** 31 - 1, 64, 192, 4)
    assert a.shape == (4, 64) and b.shape == (192, 4) and torch.isfinite(a).all() and torch.isfinite(b).all()
    assert not torch.equal(a, random_pair(0, 64, 192, 4)[0])
