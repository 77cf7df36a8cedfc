"""The common tester: every registered method × every tiny timm ViT variant, generated from the
registry (as HF PEFT's common tester runs every tuner), so a method registered later gets these
tests without writing any.

For each method alone, on a class-token ViT, register tokens + LayerScale, average pooling
without a class token, and ``qkv_bias=False``:
size 0 gives timm's own logits; the method changes them when on; the materialised model equals
the supernet; the analytic count (and the one cost table) equals ``numel``; merged equals
unmerged within 1e-5 (and a foldable method leaves no module behind); the export round-trips;
the subnet file and the Optuna encoding round-trip; save_pretrained / from_pretrained round-trip bit for bit.
"""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from tiny import TINY, VARIANTS, tiny_vit

from unitune.retrain.export import export_model, load_export
from unitune.supernet.merge import merge
from unitune.supernet.encoding import SubnetEncoding
from unitune.supernet import BackboneDims, PeftViT, SearchSpace, Subnet, count_params
from unitune.supernet.methods import METHODS

DEPTH = 4
BACKBONE = "vit_tiny_patch16_224"
CASES = [(m, v) for m in METHODS for v in sorted(VARIANTS)]


def space_for(name: str) -> SearchSpace:
    """A space holding ``name`` alone (every other method off) with three choices (two if on/off)."""
    method = METHODS[name]
    others = {m: (0,) for m in METHODS if m != name and METHODS[m].always_written}
    return SearchSpace(**others, **{name: (0, 1) if method.on_off else (0, 2, 3)})


def subnet_for(name: str, space: SearchSpace) -> Subnet:
    """Sizes that differ between blocks (one block off), or the model-level method on."""
    choices = space.choices(name)
    if METHODS[name].site == "model":
        return Subnet.uniform(DEPTH, **{name: choices[-1]})
    small, large = choices[1], choices[-1]
    return Subnet.uniform(DEPTH).replace(**{name: (large, 0, small, large)})


def perturb(model: PeftViT, seed: int = 0) -> None:
    """Non-trivial PEFT weights: most methods start as the identity (B = 0, up = 0, γ = 1, β = 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.peft_named_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)


def images() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def build(name: str, variant: str) -> tuple[torch.nn.Module, PeftViT, SearchSpace, Subnet]:
    plain = tiny_vit(variant).eval()
    space = space_for(name)
    model = PeftViT(copy.deepcopy(plain), space).eval()
    perturb(model)
    subnet = subnet_for(name, space)
    model.set_subnet(subnet)
    return plain, model, space, subnet


def peft_numel(model: PeftViT) -> int:
    return sum(p.numel() for _, p in model.peft_named_parameters())


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.mark.parametrize("name,variant", CASES)
def test_size_zero_is_timm_and_on_changes_logits(name, variant):
    plain, model, _, subnet = build(name, variant)
    x = images()
    with torch.no_grad():
        on = model(x)
        model.set_subnet(Subnet.uniform(DEPTH))
        off = model(x)
        want = plain(x)
    assert (off - want).abs().max().item() <= 1e-6
    assert (on - want).abs().max().item() > 1e-4  # the method really acts (else the rest is vacuous)


@pytest.mark.parametrize("name,variant", CASES)
def test_materialised_equals_supernet_and_counts_are_exact(name, variant):
    _, model, space, subnet = build(name, variant)
    small = model.materialize(subnet)
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), atol=1e-6, rtol=0)
    dims = BackboneDims.from_model(model)
    counted = count_params(subnet, dims, space)
    assert peft_numel(small) == counted.total > 0
    assert counted.per_method[METHODS[name].report_key] == counted.total
    # the supernet holds exactly the largest subnet's parameters
    assert peft_numel(model) == count_params(Subnet.largest(space, DEPTH), dims, space).total
    # the one cost table (through the encoding, as repair and budget read it) agrees
    encoding = SubnetEncoding(space, DEPTH, dims)
    params = encoding.encode(subnet)
    assert encoding.decode(params) == subnet
    assert encoding.n_params(params) == counted.total
    assert all(n.startswith(name) for n in encoding.names)


@pytest.mark.parametrize("name,variant", CASES)
def test_merged_equals_unmerged(name, variant):
    _, model, _, subnet = build(name, variant)
    merged = merge(model)
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(merged.model(x), model(x), atol=1e-5, rtol=0)
    if METHODS[name].foldable:
        assert not isinstance(merged.model, PeftViT)  # folded away: a plain timm model
        assert merged.unmerged.is_empty()
    else:
        assert isinstance(merged.model, PeftViT) and merged.unmerged == subnet
        assert peft_numel(merged.model) == peft_numel(model.materialize(subnet))


@pytest.mark.parametrize("name,variant", CASES)
def test_export_and_subnet_file_round_trip(tmp_path, name, variant):
    _, model, space, subnet = build(name, variant)
    kwargs = {**TINY, **VARIANTS[variant]}
    manifest = export_model(tmp_path / "export", model, BACKBONE, model_kwargs=kwargs)
    loaded, read = load_export(tmp_path / "export")
    x = images()
    with torch.no_grad():
        want = merge(model).model(x)
        torch.testing.assert_close(loaded(x), want, atol=0, rtol=0)
    assert read == manifest and Subnet.from_dict(read["subnet"]) == subnet
    assert SearchSpace.from_dict(read["space"]) == space
    if read["plain_timm"]:  # timm alone loads a fully folded model, strictly
        vit = timm.create_model(BACKBONE, pretrained=False, num_classes=read["num_classes"], **read["model_kwargs"])
        vit.load_state_dict(loaded.state_dict(), strict=True)
        with torch.no_grad():
            torch.testing.assert_close(vit.eval()(x), want, atol=0, rtol=0)
    path = subnet.replace(backbone=BACKBONE).save(tmp_path / "subnet.yaml")
    again = Subnet.load(path)
    assert again == subnet and again.backbone == BACKBONE


@pytest.mark.parametrize("name,variant", CASES)
def test_save_pretrained_round_trips_bit_for_bit(tmp_path, name, variant):
    """The API's PEFT-only checkpoint: the supernet's weights, allocated sizes and active subnet,
    read back onto a fresh copy of the same backbone, bit for bit, outputs included."""
    from unitune.supernet.api import from_pretrained, save_pretrained

    plain, model, space, subnet = build(name, variant)
    folder = save_pretrained(model, tmp_path / "peft")
    restored = from_pretrained(copy.deepcopy(plain), folder)
    assert restored.space == space and restored.capacity == model.capacity and restored.subnet == subnet
    want = model.trainable_state_dict()
    got = restored.trainable_state_dict()
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert torch.equal(got[key], value), key
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(restored(x), model(x), atol=0, rtol=0)
