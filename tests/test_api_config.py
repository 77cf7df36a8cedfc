"""The API's HF-PEFT habits (issue 22): per-method config objects checked against the registry, the
bare-dict rule of ``get_peft_model(vit, config)``, ``get_base_model``, ``disable_adapter``,
``from_pretrained(is_trainable=, allow_other_backbone=)`` with the backbone fingerprint, DoRA's
magnitude recomputed on another backbone, and DoRA / BitFit sharing LoRA's / SSF's code."""

from __future__ import annotations

import dataclasses
import json
import re
import warnings

import pytest
import torch
import torch.nn.functional as F

import unitune
from unitune.supernet.api import backbone_fingerprint
from unitune.errors import UniTuneError, UniTuneWarning
from unitune.supernet import BackboneDims, SearchSpace, Subnet, count_params
from unitune.supernet.methods import METHODS
from unitune.supernet.peft_config import (WRITTEN, AdapterConfig, BitFitConfig, DoraConfig, LoraConfig, MethodConfig,
                                          SSFConfig, UnituneConfig, VPTConfig, config_class, generate_config_class,
                                          method_configs)

from tiny import tiny_vit

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

DEPTH, D, CLASSES = 4, 64, 5


def images(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def perturb_peft(model, seed: int = 0, std: float = 0.2) -> None:
    """Non-trivial PEFT weights (LoRA's B starts at zero, SSF at identity); the head untouched."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.peft_named_parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)


def one_line(match: str):
    class Check:
        def __enter__(self):
            self.ctx = pytest.raises(UniTuneError, match=match)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            out = self.ctx.__exit__(*exc)
            assert "\n" not in str(self.info.value)
            return out

    return Check()


# ---- config objects and the registry ----------------------------------------------------------


def test_every_registered_method_has_a_config_whose_options_are_the_registrys():
    configs = method_configs()
    assert list(configs) == list(METHODS)
    for name, cls in configs.items():
        assert issubclass(cls, MethodConfig) and cls.method == name
        assert sorted(cls.option_fields.values()) == sorted(o.name for o in METHODS[name].options), name
        made = cls()  # every field has a default
        size = getattr(made, cls.size_field)
        want = size if METHODS[name].site == "model" else (size,) * DEPTH
        assert isinstance(size, int) and size > 0 and made.sizes(DEPTH) == want, name
    assert {cls.method for cls in WRITTEN} <= set(METHODS)  # no written config for an unregistered method


def test_a_generated_config_class_builds_what_the_written_one_builds():
    """A method registered without a written config gets one made from its declaration."""
    made = generate_config_class(METHODS["adapter"])
    assert made.__name__ == "AdapterConfig" and made.option_fields == {"style": "adapter_style",
                                                                      "scale": "adapter_scale"}
    a = UnituneConfig(made(size=4, style="parallel", scale=0.5))
    b = UnituneConfig(AdapterConfig(dim=4, style="parallel", scale=0.5))
    assert a.to_subnet(DEPTH) == b.to_subnet(DEPTH) and a.to_space(DEPTH) == b.to_space(DEPTH)
    with one_line(r"^AdapterConfig\.style: expected one of \['sequential', 'parallel'\], got 'x'$"):
        made(style="x")
    on_off = generate_config_class(METHODS["bitfit"])
    assert on_off().size == 1 and config_class("bitfit") is BitFitConfig


def test_lora_config_r8_counts_as_the_readme_formula_and_count_params():
    model = unitune.get_peft_model(tiny_vit(), LoraConfig(r=8))
    peft, total = model.get_nb_trainable_parameters(head=False)
    trainable, _ = model.get_nb_trainable_parameters()
    assert peft == DEPTH * 4 * D * 8  # README: 4·d·r per block on qkv
    analytic = count_params(model.capacity, BackboneDims.from_model(model), model.space)
    assert peft == analytic.total and trainable == analytic.with_head == peft + D * CLASSES + CLASSES
    assert trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert total == sum(p.numel() for p in tiny_vit().parameters()) + peft
    wide = unitune.get_peft_model(tiny_vit(), LoraConfig(r=2, targets=["qkv", "fc1"]))
    assert wide.get_nb_trainable_parameters(head=False)[0] == DEPTH * 2 * ((D + 3 * D) + (D + 4 * D))


def test_a_config_object_a_dict_and_subnet_build_the_same_model():
    by_config = unitune.get_peft_model(tiny_vit(), [LoraConfig(r=8), SSFConfig()])
    by_dict = unitune.get_peft_model(tiny_vit(), {"lora": 8, "ssf": 1})
    by_subnet = unitune.get_peft_model(tiny_vit(), subnet={"lora": 8, "ssf": 1})
    assert by_config.subnet == by_dict.subnet == by_subnet.subnet == Subnet.uniform(DEPTH, lora=8, ssf=1)
    assert by_config.space == by_dict.space == by_subnet.space
    assert by_config.capacity == by_config.subnet  # a fixed subnet, not a supernet
    for model in (by_config, by_dict, by_subnet):
        perturb_peft(model)
    with torch.no_grad():
        assert torch.equal(by_config(images()), by_subnet(images()))
        assert torch.equal(by_dict(images()), by_subnet(images()))


def test_options_per_block_sizes_and_blocks():
    model = unitune.get_peft_model(tiny_vit(), UnituneConfig(
        LoraConfig(r=4, alpha=8, targets=["qkv", "proj"]), VPTConfig(tokens=3, blocks=[1, 2]),
        AdapterConfig(dim=[2, 0, 0, 5], style="parallel"), unitune.SSFGlobalConfig()))
    s = model.subnet
    assert s.lora == (4,) * 4 and s.vpt == (0, 3, 3, 0) and s.adapter == (2, 0, 0, 5) and s.ssf_global == 1
    assert s.ssf == s.bitfit == s.dora == s.adapter_plus == (0,) * 4
    space = model.space
    assert space.lora_scale == 8 / 4 and space.lora_targets == ("qkv", "proj") and space.adapter_style == "parallel"
    assert space.choices("adapter") == (0, 2, 5) and space.choices("vpt") == (0, 3) and space.choices("ssf") == (0,)
    assert model.named_layers["blocks.0.lora.proj"].scale == 2.0
    assert "blocks.0.vpt" not in model.named_layers and "blocks.1.vpt" in model.named_layers


@pytest.mark.parametrize("cls", [LoraConfig, DoraConfig])
def test_alpha_stays_as_given_and_replace_gives_s_alpha_over_the_new_r(cls):
    config = cls(r=8, alpha=16, targets=["qkv"])
    assert config.alpha == 16 and config.scale is None  # the user's fields, nothing derived written back
    smaller = dataclasses.replace(config, r=4)  # used to raise "give alpha ... or scale, not both"
    assert smaller == cls(r=4, alpha=16, targets=["qkv"]) and smaller.scale is None
    assert config.space_options()[f"{cls.method}_scale"] == 16 / 8
    assert smaller.space_options()[f"{cls.method}_scale"] == 16 / 4
    model = unitune.get_peft_model(tiny_vit(), smaller)
    assert model.subnet.sizes(cls.method) == (4,) * DEPTH
    assert getattr(model.space, f"{cls.method}_scale") == 4.0
    assert model.named_layers[f"blocks.0.{cls.method}.qkv"].scale == 4.0
    # the same model as the explicit scale s = 16 / 4: same weights, same logits
    by_scale = unitune.get_peft_model(tiny_vit(), cls(r=4, scale=4.0, targets=["qkv"]))
    for m in (model, by_scale):
        perturb_peft(m)
    with torch.no_grad():
        assert torch.equal(model(images()), by_scale(images()))
    with one_line(rf"^{cls.__name__}\.alpha: s = alpha / r needs one rank > 0"):
        dataclasses.replace(config, r=[4] * DEPTH)


def test_config_objects_round_trip_through_repr_and_compare_equal():
    names = {c.__name__: c for c in WRITTEN} | {"UnituneConfig": UnituneConfig}
    configs = [LoraConfig(r=8, alpha=16), DoraConfig(r=2, alpha=1.0, targets=["qkv", "fc1"]), LoraConfig(scale=0.5),
               AdapterConfig(dim=[2, 0, 0, 5], style="parallel"), VPTConfig(tokens=3, blocks=[1, 2]), SSFConfig()]
    for config in configs:
        again = eval(repr(config), names)  # the repr is the constructor call that made it
        assert again == config and repr(again) == repr(config)
    assert "scale=None" in repr(configs[0]) and "alpha=16" in repr(configs[0])
    assert LoraConfig(r=8, alpha=16) != LoraConfig(r=8, scale=2.0)  # equal s, different fields given
    combined = UnituneConfig(*configs[2:])
    assert eval(repr(combined), names) == combined


@pytest.mark.parametrize("make,message", [
    (lambda: LoraConfig(r=-1), r"^LoraConfig\.r: expected a non-negative integer, got -1$"),
    (lambda: LoraConfig(r=[8, "a"]), r"^LoraConfig\.r: expected a non-negative integer, got 'a'$"),
    (lambda: LoraConfig(dropout=0.1), r"^LoraConfig\.dropout: unitune's LoRA has no dropout; expected 0\.0, got 0\.1$"),
    (lambda: LoraConfig(alpha=16, scale=2.0), r"^LoraConfig: give alpha \(s = alpha / r\) or scale, not both$"),
    (lambda: LoraConfig(r=[4, 4, 4, 4], alpha=8), r"^LoraConfig\.alpha: s = alpha / r needs one rank > 0"),
    (lambda: LoraConfig(targets=["qkvv"]), r"^LoraConfig\.targets: unknown target 'qkvv', expected one of"),
    (lambda: LoraConfig(r=[8, 8], blocks=[0]), r"^LoraConfig: give r as a list per block or blocks=, not both$"),
    (lambda: LoraConfig(blocks="0"), r"^LoraConfig\.blocks: expected a list of block indices, got '0'$"),
    (lambda: SSFConfig(on=2), r"^SSFConfig\.on: SSF is off \(0\) or on \(1\), got 2$"),
    (lambda: unitune.SSFGlobalConfig(on=[1]), r"^SSFGlobalConfig\.on: SSF is one size for the whole model"),
    (lambda: unitune.DoraConfig(scale=float("nan")), r"^DoraConfig\.scale: expected a finite number, got nan$"),
    (lambda: UnituneConfig(LoraConfig(), LoraConfig(r=2)), r"^UnituneConfig: two configs for 'lora'; give one per"),
    (lambda: UnituneConfig(LoraConfig(), {"ssf": 1}), r"^UnituneConfig: expected method configs .*got dict$"),
    (lambda: UnituneConfig(), r"^UnituneConfig: names no method"),
])
def test_config_objects_check_their_fields_in_one_line(make, message):
    with one_line(message):
        make()


@pytest.mark.parametrize("config,message", [
    (LoraConfig(r=[8, 8]), r"^LoraConfig\.r: 2 sizes, but the backbone has 4 blocks$"),
    (LoraConfig(blocks=[1, 4]), r"^LoraConfig\.blocks: block 4 is outside the backbone's 4 blocks \(0\.\.3\)$"),
])
def test_config_objects_are_checked_against_the_backbone(config, message):
    vit = tiny_vit()
    with one_line(message):
        unitune.get_peft_model(vit, config)
    assert not any(isinstance(m, unitune.PeftViT) for m in vit.modules())


# ---- the bare-dict rule -----------------------------------------------------------------------


def test_a_bare_dict_is_always_a_fixed_subnet():
    uniform = unitune.get_peft_model(tiny_vit(), {"lora": 8})  # read as a space before issue 22, and failed
    assert uniform.subnet == uniform.capacity == Subnet.uniform(DEPTH, lora=8)
    per_block = unitune.get_peft_model(tiny_vit(), {"lora": [0, 8, 0, 8], "ssf_global": 1, "lora_targets": ["fc2"]})
    assert per_block.subnet == per_block.capacity and per_block.subnet.lora == (0, 8, 0, 8)
    assert per_block.space.lora_targets == ("fc2",) and "blocks.1.lora.fc2" in per_block.named_layers
    # A space only through space= (or a SearchSpace object): the supernet.
    supernet = unitune.get_peft_model(tiny_vit(), space={"lora": [0, 8]})
    assert supernet.space.choices("lora") == (0, 8) and supernet.capacity == Subnet.uniform(DEPTH, lora=8)
    as_object = unitune.get_peft_model(tiny_vit(), SearchSpace(lora=(0, 4, 8)))
    assert as_object.space.choices("lora") == (0, 4, 8)
    # A dict config with space=: sizes checked in it, its options shape the layers (as subnet=).
    both = unitune.get_peft_model(tiny_vit(), {"lora": 4}, space={"lora": [0, 4, 8], "lora_targets": ["proj"]})
    assert both.capacity == Subnet.uniform(DEPTH, lora=4) and "blocks.0.lora.proj" in both.named_layers
    # The subnet file's layout and a Subnet object as config.
    layout = unitune.get_peft_model(tiny_vit(), {"subnet": {"lora": [8] * 4}})
    obj = unitune.get_peft_model(tiny_vit(), Subnet.uniform(DEPTH, lora=8))
    assert layout.subnet == obj.subnet == uniform.subnet


@pytest.mark.parametrize("config,kwargs,message", [
    ({"lora": [0, 8]}, {}, r"^get_peft_model: config\['lora'\] = \[0, 8\]: expected one size \(an int\) or one per "
                           r"block \(a list of 4 ints\); a dict config is a fixed subnet; a search space goes through "
                           r"space= \(e\.g\. space=\{'lora': \[0, 4, 8\]\}\)$"),
    ({"lora": "8"}, {}, r"^get_peft_model: config\['lora'\] = '8': expected one size"),
    ({"lora": 8.0}, {}, r"^get_peft_model: config\['lora'\] = 8\.0: expected one size"),
    ({"ssf_global": [1]}, {}, r"^get_peft_model: config\['ssf_global'\] = \[1\]: expected one size \(an int\); .*"
                              r"space=\{'ssf_global': \[0, 1\]\}\)$"),
    ({"lorra": 8}, {}, r"^get_peft_model: config key 'lorra': expected a method \(lora, adapter, .*\) or a method "
                       r"option \(lora_targets, "),
    ({}, {}, r"^get_peft_model: the config dict names no method; expected e\.g\. \{'lora': 8\}$"),
    ({"lora_targets": ["qkv"]}, {}, r"^get_peft_model: the config dict names no method, only options "),
    ({"lora": -1}, {}, r"^get_peft_model: config: subnet\.lora\[0\]: expected a non-negative integer, got -1$"),
    ({"ssf": 2}, {}, r"^get_peft_model: config: subnet\.ssf: SSF is off \(0\) or on \(1\) per block, "
                     r"got \[2, 2, 2, 2\]$"),
    ({"lora": 4, "lora_targets": ["fc1"]}, {"space": {"lora": [0, 4]}},
     r"^get_peft_model: options \['lora_targets'\] in the config dict and space= as well; give the options in space=$"),
    ({"lora": 5}, {"space": {"lora": [0, 4]}},
     r"^get_peft_model: subnet: lora\[0\] = 5 is not in the search space \[0, 4\]$"),
    ({"lora": 4}, {"subnet": {"lora": 4}}, r"^get_peft_model: give config or subnet=, not both"),
    (LoraConfig(), {"space": {"lora": [0, 8]}}, r"^get_peft_model: method configs carry their own options; give "
                                                r"space= only with a dict, Subnet or SearchSpace config$"),
    (SearchSpace(lora=(0, 8)), {"space": {"lora": [0, 8]}}, r"^get_peft_model: config is a SearchSpace; give it or "),
    (8, {}, r"^get_peft_model: config must be a method config \(LoraConfig, SSFConfig, \.\.\.\), a list of them, a "
            r"UnituneConfig, a Subnet, a SearchSpace or a dict like \{'lora': 8\}, got int$"),
    ([LoraConfig(), "ssf"], {}, r"^UnituneConfig: expected method configs .*got str$"),
])
def test_bad_configs_are_one_line_errors(config, kwargs, message):
    with one_line(message):
        unitune.get_peft_model(tiny_vit(), config, **kwargs)


# ---- get_base_model / disable_adapter ---------------------------------------------------------


def test_get_base_model_is_the_wrapped_vit():
    vit = tiny_vit()
    model = unitune.get_peft_model(vit, LoraConfig(r=2))
    assert model.get_base_model() is vit is model.vit


@pytest.mark.parametrize("variant", ["cls", "reg_layerscale", "no_qkv_bias"])
def test_disable_adapter_gives_the_frozen_backbone_and_restores_the_subnet(variant):
    plain = tiny_vit(variant).eval()  # same seed: the same weights and head
    every = {"lora": [2, 0, 4, 2], "adapter": 3, "vpt": [0, 2, 2, 0], "ssf": 1, "ssf_global": 1, "bitfit": 1,
             "dora": [1, 2, 0, 1], "adapter_plus": 2, "lora_targets": ["qkv", "fc1"]}
    model = unitune.get_peft_model(tiny_vit(variant), every).eval()
    perturb_peft(model)
    x = images()
    with torch.no_grad():
        want = plain(x)
        on = model(x)
        assert not torch.allclose(on, want, atol=1e-3)  # the PEFT layers change the output
        with model.disable_adapter() as inside:
            assert inside is model
            assert torch.allclose(model(x), want, atol=1e-6, rtol=0)
            # what the model says of itself agrees: nothing active inside the block
            assert model.subnet == Subnet.uniform(4) and model.subnet != model.capacity
        assert torch.equal(model(x), on) and model.subnet == model.capacity
        with pytest.raises(RuntimeError, match="inside"):
            with model.disable_adapter():
                raise RuntimeError("inside")
        assert torch.equal(model(x), on)  # restored on an error too


def test_disable_adapter_keeps_a_supernets_active_subnet():
    model = unitune.get_peft_model(tiny_vit(), space={"lora": [0, 2, 8], "ssf": [0, 1]}).eval()
    perturb_peft(model)
    small = Subnet.uniform(DEPTH, lora=2)
    model.set_subnet(small)
    with torch.no_grad():
        before = model(images())
        with model.disable_adapter():
            assert torch.allclose(model(images()), tiny_vit().eval()(images()), atol=1e-6, rtol=0)
        assert torch.equal(model(images()), before) and model.subnet == small


# ---- from_pretrained: trainable or not, the backbone fingerprint ------------------------------


def test_from_pretrained_freezes_by_default_and_is_trainable_leaves_peft_and_head(tmp_path):
    model = unitune.get_peft_model(tiny_vit(), [LoraConfig(r=4), BitFitConfig()])
    folder = model.save_pretrained(tmp_path / "peft")
    frozen = unitune.from_pretrained(tiny_vit(), folder)
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    trainable = unitune.PeftModel.from_pretrained(tiny_vit(), folder, is_trainable=True)
    names = {n for n, p in trainable.trainable_named_parameters()}
    assert all(p.requires_grad for _, p in trainable.trainable_named_parameters())
    counted = count_params(trainable.capacity, BackboneDims.from_model(trainable), trainable.space)
    assert sum(p.numel() for p in trainable.parameters() if p.requires_grad) == counted.with_head
    assert {n for n in names if n.startswith("head.")} == {"head.weight", "head.bias"}
    unitune.make_optimizer(trainable)  # has parameters to train


def test_the_fingerprint_is_the_backbones_whatever_wraps_it_and_sees_one_value():
    vit = tiny_vit()
    plain = backbone_fingerprint(vit)
    assert re.fullmatch(r"[0-9a-f]{64}", plain)
    model = unitune.get_peft_model(vit, {"lora": 2, "ssf": 1, "bitfit": 1, "dora": 1, "vpt": 1, "adapter_plus": 1})
    assert backbone_fingerprint(model.vit) == plain
    with torch.no_grad():
        model.vit.head.weight.add_(1.0)  # the head is trained: not part of the backbone
    assert backbone_fingerprint(model.vit) == plain
    other = tiny_vit()
    with torch.no_grad():
        other.blocks[2].mlp.fc1.weight.view(-1)[7] += 1e-3
    assert backbone_fingerprint(other) != plain
    assert backbone_fingerprint(tiny_vit().to(torch.bfloat16)) != plain  # other dtype, other bytes


def test_a_save_is_refused_on_other_backbone_weights_unless_allowed(tmp_path):
    model = unitune.get_peft_model(tiny_vit(), {"lora": 4, "bitfit": 1})
    perturb_peft(model)
    folder = model.save_pretrained(tmp_path / "peft")
    config_path = folder / "peft_config.json"
    saved = json.loads(config_path.read_text())["backbone_sha256"]
    assert saved == backbone_fingerprint(tiny_vit())
    other = tiny_vit(seed=1)  # same shapes, other weights
    theirs = backbone_fingerprint(other)
    flags = [p.requires_grad for p in other.parameters()]
    with one_line(rf"^{re.escape(str(config_path))}: the PEFT weights were trained on backbone weights "
                  rf"{saved[:12]}\.\.\., but the base model's are {theirs[:12]}\.\.\. \(sha256 of the frozen backbone "
                  rf"tensors\); load onto the same pretrained weights, or pass allow_other_backbone=True$"):
        unitune.from_pretrained(other, folder)
    assert not any(isinstance(m, unitune.supernet.methods.layers.PeftLayer) for m in other.modules())
    assert [p.requires_grad for p in other.parameters()] == flags
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DoRA: no warning
        loaded = unitune.from_pretrained(other, folder, allow_other_backbone=True)
    for name, value in model.trainable_state_dict().items():
        assert torch.equal(loaded.trainable_state_dict()[name], value), name


def test_an_old_save_without_a_fingerprint_loads_with_one_note(tmp_path):
    import unitune.supernet.api as api

    folder = unitune.get_peft_model(tiny_vit(), {"lora": 2}).save_pretrained(tmp_path / "peft")
    config_path = folder / "peft_config.json"
    config = json.loads(config_path.read_text())
    del config["backbone_sha256"]
    config_path.write_text(json.dumps(config))
    api._NOTED.discard(str(config_path))
    with pytest.warns(UniTuneWarning, match=rf"^{re.escape(str(config_path))}: saved without a backbone fingerprint"):
        unitune.from_pretrained(tiny_vit(seed=3), folder)  # other weights: not checked
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        unitune.from_pretrained(tiny_vit(), folder)  # noted once per folder


# ---- DoRA: a LoRA variant, its magnitude recomputed on another backbone -------------------------


def test_dora_shares_loras_factors_init_and_update():
    from unitune.supernet.methods.dora import DoRALinear
    from unitune.supernet.methods.lora import LoRALinear

    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 24)
    torch.manual_seed(5)
    lora = LoRALinear(lin, 4, scale=0.5)
    torch.manual_seed(5)
    dora = DoRALinear(lin, 4, scale=0.5)
    assert isinstance(dora, LoRALinear)
    assert [n for n, _ in dora.peft_named_parameters()] == ["lora_A", "lora_B", "magnitude"]
    assert torch.equal(dora.lora_A, lora.lora_A) and torch.equal(dora.lora_B, lora.lora_B)
    with torch.no_grad():
        for layer in (lora, dora):
            layer.lora_B.copy_(torch.randn(24, 4, generator=torch.Generator().manual_seed(2)))
        dora.magnitude.mul_(1.5)
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(3))
    for r in (1, 3, 4):
        dora.set_size(r), lora.set_size(r)
        assert torch.equal(dora.delta_weight(), lora.delta_weight())
        w = lin.weight + lora.delta_weight()
        want = F.linear(x, w * (dora.magnitude / torch.linalg.vector_norm(w, dim=1)).unsqueeze(1), lin.bias)
        assert torch.equal(dora(x), want)  # the same expression, the same bits


def test_recompute_dora_magnitude_on_another_backbone(tmp_path):
    model = unitune.get_peft_model(tiny_vit(), [unitune.DoraConfig(r=2, targets=["qkv", "fc2"]), LoraConfig(r=2)])
    perturb_peft(model)
    folder = model.save_pretrained(tmp_path / "peft")
    with pytest.warns(UniTuneWarning, match=r"DoRA's magnitude belongs to the saved backbone: call "
                                            r"model\.recompute_dora_magnitude\(\)$"):
        moved = unitune.from_pretrained(tiny_vit(seed=1), folder, allow_other_backbone=True)
    layers = {n: l for n, l in moved.named_layers.items() if moved.layer_sites[n][0] == "dora"}
    assert len(layers) == 2 * DEPTH
    saved = {n: l.magnitude.detach().clone() for n, l in layers.items()}
    assert moved.recompute_dora_magnitude() == 2 * DEPTH
    x = torch.randn(3, 7, D, generator=torch.Generator().manual_seed(4))
    for name, layer in layers.items():
        w = layer.base.weight + layer.scale * layer.lora_B @ layer.lora_A  # the other backbone's W + s·B A
        norm = torch.linalg.vector_norm(w.detach(), dim=1)
        assert torch.allclose(layer.magnitude, norm, rtol=1e-6, atol=0) and not torch.allclose(saved[name], norm)
        with torch.no_grad():  # m = ‖W + s·B A‖: the layer is W + s·B A on the new weights
            x_in = x if name.endswith("qkv") else torch.randn(3, 7, layer.in_features)
            assert torch.allclose(layer(x_in), F.linear(x_in, w, layer.base.bias), atol=1e-5, rtol=1e-5)


def test_point_methods_share_one_base():
    from unitune.supernet.methods.bitfit import BitFit
    from unitune.supernet.methods.point import PointLayer, PointMethod
    from unitune.supernet.methods.ssf import SSF

    assert issubclass(SSF, PointLayer) and issubclass(BitFit, PointLayer)
    assert isinstance(METHODS["ssf"], PointMethod) and isinstance(METHODS["bitfit"], PointMethod)
    assert METHODS["ssf"].layer_class is SSF and METHODS["bitfit"].layer_class is BitFit


# ---- retrain --init supernet --backbone OTHER: DoRA's magnitude recomputed --------------------


@pytest.mark.parametrize("same", [True, False])
def test_retrain_init_supernet_on_another_backbone_recomputes_dora_magnitude(tmp_path, same):
    import yaml
    from safetensors.torch import save_file

    from tiny import TINY
    from unitune.engine.config import load_run_config
    from unitune.retrain.train import build_subnet_model
    from unitune.supernet.store import read_supernet, save_supernet

    files = {}
    for seed in (0, 1):  # two "pretrained" backbones of the same shapes
        files[seed] = tmp_path / f"backbone{seed}.safetensors"
        save_file(tiny_vit(seed=seed).state_dict(), str(files[seed]))
    space = {"lora": [0, 2], "dora": [0, 1, 2], "dora_targets": ["qkv", "fc1"]}
    cfg = {"name": "dora", "device": "cpu",
           "model": {"backbone": "vit_tiny_patch16_224", "weights": str(files[0]), "kwargs": TINY},
           "data": {"source": "synthetic", "num_classes": CLASSES, "samples_per_class": 2, "image_size": 32,
                    "batch_size": 2, "num_workers": 0},
           "space": space}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    run = load_run_config(tmp_path / "run.yaml")
    trained = unitune.get_peft_model(tiny_vit(seed=0), space=SearchSpace.from_dict(run.space))  # on backbone 0
    perturb_peft(trained)
    meta = {"backbone": "vit_tiny_patch16_224", "model": run.section("model"), "num_classes": CLASSES,
            "data_config": {"input_size": [3, 32, 32]}}
    path = save_supernet(tmp_path / "supernet.safetensors", trained, meta)
    assert read_supernet(path)[1]["backbone_sha256"] == backbone_fingerprint(tiny_vit(seed=0))
    subnet = Subnet.uniform(DEPTH, lora=2, dora=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = build_subnet_model(run, subnet, CLASSES, torch.device("cpu"), tmp_path, "supernet", path,
                                   backbone=files[0 if same else 1])
    notes = [str(w.message) for w in caught if issubclass(w.category, UniTuneWarning)]
    assert notes == ([] if same else [f"{path}: trained on other backbone weights than this retrain's; DoRA's "
                                      f"magnitude recomputed from them ({2 * DEPTH} layers, m = ||W + s*B A||)"])
    assert backbone_fingerprint(model.vit) == backbone_fingerprint(tiny_vit(seed=0 if same else 1))
    for name, layer in model.named_layers.items():
        if model.layer_sites[name][0] != "dora":
            continue
        supernet_m = dict(trained.peft_named_parameters())[f"{name}.magnitude"]
        w = (layer.base.weight + layer.delta_weight()).detach()  # rank 1: the subnet's
        if same:  # the supernet's own weights: its trained magnitude is kept, bit for bit
            assert torch.equal(layer.magnitude, supernet_m)
        else:  # another backbone: m = ‖W + s·B A‖ of the new weight, at the subnet's rank
            assert torch.allclose(layer.magnitude, torch.linalg.vector_norm(w, dim=1), rtol=1e-6, atol=0)
            assert not torch.allclose(layer.magnitude, supernet_m)
