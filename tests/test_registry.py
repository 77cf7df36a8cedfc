"""The method registry: lookups and their errors, and a method added from outside the package —
one class and one ``register_method`` line — running through the whole pipeline while leaving
every existing file format, Optuna parameter name and seeded draw as it was."""

from __future__ import annotations

import pytest
import torch
from search_util import tiny_dims
from tiny import VARIANTS, tiny_vit
from torch import nn

import test_methods_matrix as matrix
from unitune.errors import UniTuneError
from unitune.supernet.encoding import SubnetEncoding
from unitune.supernet import PeftViT, SearchSpace, Subnet
from unitune.supernet.methods.layers import PeftLayer, get_path, set_path
from unitune.supernet.methods import METHODS, Method, get_method, register_method
from unitune.supernet.methods.base import Option, finite_number
from unitune.supernet.methods.fold import fold_scale_shift
from unitune.supernet.sampler import SubnetSampler
from unitune.engine.train import TrainConfig, build_optimizer

LEGACY = ["lora", "adapter", "vpt", "ssf", "ssf_global"]


# ---- a method written outside the package: the whole of what adding one takes -----------------


class Shift(PeftLayer):
    """``fc2(x) + s·β``: a learned shift of the MLP output, on or off."""

    def __init__(self, fc2: nn.Linear, scale: float, device=None, dtype=None):
        super().__init__(1)
        self.fc2, self.scale = fc2, scale
        self.shift = nn.Parameter(torch.zeros(fc2.out_features, device=device, dtype=dtype))

    def forward(self, x):
        y = self.fc2(x)
        return y + self.scale * self.shift if self.size else y


class MlpShift(Method):
    name = "mlp_shift"
    label = "MLP shift"
    on_off = True
    options = (Option("mlp_shift_scale", 1.0, finite_number),)
    foldable = True
    family = "shift"

    def params(self, size, block, dims, space):
        return block.ops["mlp.fc2"]["weight"][0]

    def inject(self, vit, space, block, size, dd):
        layer = Shift(get_path(vit.blocks[block], "mlp.fc2"), space.mlp_shift_scale, **dd)
        set_path(vit.blocks[block], "mlp.fc2", layer)
        return [("", layer)]

    def fold(self, vit, block, suffix, layer):
        fc2 = vit.get_submodule(f"blocks.{block}.mlp.fc2")
        shift = layer.scale * layer.shift
        return [f"blocks.{block}.mlp.fc2.{p}" for p in fold_scale_shift(fc2, torch.ones_like(shift), shift)]


@pytest.fixture
def mlp_shift():
    register_method(MlpShift())
    yield METHODS["mlp_shift"]
    del METHODS["mlp_shift"]


# ---- tests ---------------------------------------------------------------------------------------


def test_registry_order_and_lookup():
    assert list(METHODS)[:5] == LEGACY  # the order of Optuna parameters and files: append only
    assert get_method("vpt").site == "block" and get_method("ssf_global").site == "model"
    with pytest.raises(UniTuneError) as err:
        get_method("loar")
    assert str(err.value) == f"unknown method 'loar', expected one of {list(METHODS)}"
    assert str(err.value).startswith("unknown method 'loar', expected one of ['lora', 'adapter', 'vpt', 'ssf', 'ssf_global'")


def test_register_refuses_duplicates_and_clashing_options(mlp_shift):
    with pytest.raises(ValueError, match="'mlp_shift' is already registered"):
        register_method(MlpShift())
    clash = type("Clash", (MlpShift,), {"name": "other", "options": (Option("lora_scale", 1.0, finite_number),)})
    with pytest.raises(ValueError, match="option 'lora_scale' clashes"):
        register_method(clash())
    with pytest.raises(ValueError, match="site must be one of"):
        register_method(type("Odd", (MlpShift,), {"name": "odd", "options": (), "site": "head"})())
    assert list(METHODS)[:5] == LEGACY and list(METHODS)[-1] == "mlp_shift"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_a_registered_method_passes_the_common_tester(mlp_shift, variant, tmp_path):
    matrix.test_size_zero_is_timm_and_on_changes_logits("mlp_shift", variant)
    matrix.test_materialised_equals_supernet_and_counts_are_exact("mlp_shift", variant)
    matrix.test_merged_equals_unmerged("mlp_shift", variant)
    matrix.test_export_and_subnet_file_round_trip(tmp_path, "mlp_shift", variant)


def test_a_method_the_space_does_not_hold_changes_no_file_name_or_draw(mlp_shift):
    space = SearchSpace()
    assert "mlp_shift" not in space.to_dict() and space.mlp_shift == (0,) and space.methods == tuple(LEGACY)
    assert list(Subnet.uniform(4, lora=1).to_dict()["subnet"]) == LEGACY
    encoding = SubnetEncoding(space, 4, tiny_dims())
    assert encoding.names[-1] == "ssf_global" and not any("mlp_shift" in n for n in encoding.names)
    with_it = [s.to_dict() for s in (SubnetSampler(space, tiny_dims(), seed=3).uniform() for _ in range(5))]
    del METHODS["mlp_shift"]
    try:
        assert SubnetEncoding(space, 4, tiny_dims()).names == encoding.names
        assert [s.to_dict() for s in (SubnetSampler(space, tiny_dims(), seed=3).uniform() for _ in range(5))] == with_it
    finally:
        register_method(mlp_shift)
    # held by a space: searched after the original ones, written in the space and subnet files
    held = SearchSpace.from_dict({"mlp_shift": [0, 1], "mlp_shift_scale": 2.0})
    names = SubnetEncoding(held, 4, tiny_dims()).names
    assert names[-5:] == ("ssf_global", "mlp_shift.00", "mlp_shift.01", "mlp_shift.02", "mlp_shift.03")
    assert held.to_dict()["mlp_shift"] == [0, 1] and held.to_dict()["mlp_shift_scale"] == 2.0
    assert SearchSpace.from_dict(held.to_dict()) == held
    on = Subnet.uniform(4, mlp_shift=1)
    assert on.to_dict()["subnet"]["mlp_shift"] == [1, 1, 1, 1] and Subnet.from_dict(on.to_dict()) == on
    with pytest.raises(UniTuneError, match=r"space\.mlp_shift: MLP shift is off \(0\) or on \(1\), got \[0, 2\]"):
        SearchSpace.from_dict({"mlp_shift": [0, 2]})


def test_subnet_and_space_are_mappings_with_the_old_constructors():
    positional = Subnet((1, 0), (2, 0), (3, 0), (1, 0), 1)
    keyword = Subnet(lora=(1, 0), adapter=(2, 0), vpt=(3, 0), ssf=(1, 0), ssf_global=1)
    assert positional == keyword and hash(positional) == hash(keyword)
    assert list(keyword) == list(METHODS) and not any(keyword.is_on(m) for m in list(METHODS)[5:])
    assert {m: keyword[m] for m in LEGACY} == {"lora": (1, 0), "adapter": (2, 0), "vpt": (3, 0), "ssf": (1, 0),
                                               "ssf_global": 1}
    assert keyword["vpt"] == keyword.vpt == keyword.sizes("vpt") == (3, 0) and keyword.depth == 2
    assert Subnet(lora=(4, 4)) == Subnet.uniform(2, lora=4)  # unnamed methods are off
    assert keyword.replace(vpt=(0, 0), backbone="b") == Subnet((1, 0), (2, 0), (0, 0), (1, 0), 1)
    space = SearchSpace(vpt=(0, 2))
    assert dict(space)["vpt"] == (0, 2) and space["lora"] == (0, 1, 5, 10) and list(space) == list(METHODS)
    with pytest.raises(UniTuneError, match=r"^subnet: unknown method 'loar', expected one of \['lora'"):
        Subnet(loar=(1,))
    with pytest.raises(AttributeError):
        keyword.lora = (0, 0)


def test_weight_decay_exceptions_come_from_the_methods():
    model = PeftViT(tiny_vit(), SearchSpace(lora=(0, 2), adapter=(0,), vpt=(0, 3)))
    assert model.no_weight_decay() == {f"blocks.{i}.vpt.prompts" for i in range(4)}
    optimizer = build_optimizer(model.trainable_named_parameters(), TrainConfig(weight_decay=0.1),
                                model.no_weight_decay())
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] for p in g["params"]}
    named = dict(model.trainable_named_parameters())
    assert id(named["blocks.0.vpt.prompts"]) not in decayed and id(named["blocks.0.lora.qkv.lora_A"]) in decayed
