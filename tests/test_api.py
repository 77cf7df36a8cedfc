"""The Python API (unitune.supernet.api): wrap, count, optimise with the guard, save/load, merge, and the
README's notebook example, run as it stands."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

import unitune
from unitune.errors import UniTuneError
from unitune.supernet import BackboneDims, PeftViT, SearchSpace, Subnet, count_params
from unitune.engine.train import build_optimizer
from unitune.engine.config import TrainConfig

from tiny import tiny_vit

DEPTH = 4
README = Path(__file__).resolve().parents[1] / "README.md"


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def sub(**sizes) -> Subnet:
    """A subnet by method name, in the subnet file's layout (methods left out are off)."""
    return Subnet.from_dict({"subnet": sizes})


# A mix of every method on the tiny ViT (4 blocks), inside the supernets below.
MIX = sub(lora=[2, 0, 8, 2], adapter=[4, 0, 0, 4], vpt=[0, 3, 3, 0], ssf=[1, 0, 1, 0], ssf_global=1)


def perturb(model: PeftViT, seed: int = 0, std: float = 0.2) -> None:
    """Non-trivial PEFT weights and head (LoRA's B starts at zero, SSF at identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.trainable_named_parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)


def images(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


# ---- get_peft_model --------------------------------------------------------------------------


def test_subnet_dict_forms_build_the_same_fixed_model():
    uniform = unitune.get_peft_model(tiny_vit(), subnet={"lora": 8, "ssf": 1})
    assert uniform.subnet == uniform.capacity == Subnet.uniform(DEPTH, lora=8, ssf=1)
    # The space a fixed subnet gets: 0 and its own sizes for each method, the rest off.
    assert uniform.space.choices("lora") == (0, 8) and uniform.space.choices("ssf") == (0, 1)
    assert uniform.space.choices("adapter") == uniform.space.choices("vpt") == (0,)
    per_block = unitune.get_peft_model(tiny_vit(), subnet={"lora": [8, 0, 2, 8], "vpt": 3, "ssf_global": 1})
    assert per_block.subnet == sub(lora=[8, 0, 2, 8], vpt=[3] * 4, ssf_global=1)
    assert sorted(per_block.named_layers)[:2] == ["blocks.0.lora.qkv", "blocks.0.vpt"]
    assert "blocks.1.lora.qkv" not in per_block.named_layers
    as_object = unitune.get_peft_model(tiny_vit(), subnet=Subnet.uniform(DEPTH, lora=8, ssf=1))
    file_layout = unitune.get_peft_model(tiny_vit(), subnet={"subnet": {"lora": [8] * 4, "ssf": [1] * 4}})
    assert as_object.subnet == file_layout.subnet == uniform.subnet


def test_space_dict_builds_a_supernet_with_the_methods_it_names():
    model = unitune.get_peft_model(tiny_vit(), space={"lora": [0, 2, 8], "ssf": [0, 1], "lora_targets": ["qkv", "fc1"]})
    assert model.capacity == model.subnet == Subnet.uniform(DEPTH, lora=8, ssf=1)
    assert model.space.lora_targets == ("qkv", "fc1") and model.space.choices("adapter") == (0,)
    assert {n.split(".")[2] for n in model.named_layers} == {"lora", "ssf"}
    space = SearchSpace(lora=(0, 4), adapter=(0, 2))
    assert unitune.get_peft_model(tiny_vit(), space=space).space is space


def test_space_and_subnet_together_use_the_space_options_and_check_the_sizes():
    model = unitune.get_peft_model(tiny_vit(), space={"lora": [0, 4, 8], "lora_targets": ["qkv", "proj"]},
                                   subnet={"lora": 4})
    assert model.capacity == Subnet.uniform(DEPTH, lora=4)
    assert "blocks.0.lora.proj" in model.named_layers
    with pytest.raises(UniTuneError, match=r"^get_peft_model: subnet: lora\[0\] = 5 is not in the search space \[0, 4, 8\]$"):
        unitune.get_peft_model(tiny_vit(), space={"lora": [0, 4, 8]}, subnet={"lora": 5})


@pytest.mark.parametrize("kwargs,message", [
    ({}, r"^get_peft_model: give space= \(a supernet over it\) or subnet= \(a fixed subnet\)"),
    ({"subnet": {"lorra": 8}}, r"^get_peft_model: unknown method 'lorra' under 'subnet'"),
    ({"subnet": {"lora": [8, 8]}}, r"^get_peft_model: subnet: lists have 2 entries, but the backbone has 4 blocks$"),
    ({"subnet": {"lora": -1}}, r"subnet\.lora\[0\]: expected a non-negative integer, got -1"),
    ({"space": {"lora": [8, 0]}}, r"^get_peft_model: space\.lora: sizes must be strictly increasing, got \[8, 0\]$"),
    ({"space": [0, 8]}, r"^get_peft_model: space must be a SearchSpace or a dict"),
])
def test_bad_arguments_are_one_line_errors(kwargs, message):
    with pytest.raises(UniTuneError, match=message) as err:
        unitune.get_peft_model(tiny_vit(), **kwargs)
    assert "\n" not in str(err.value)


def test_a_vit_wrapped_once_is_not_wrapped_again(tmp_path):
    vit = tiny_vit()
    model = unitune.get_peft_model(vit, subnet={"lora": 8})
    message = r"^get_peft_model: this ViT already holds PEFT layers \(it is wrapped by a PeftViT\); pass a fresh timm model"
    with pytest.raises(UniTuneError, match=message):
        unitune.get_peft_model(vit, subnet={"lora": 8})
    with pytest.raises(UniTuneError, match=message.replace("get_peft_model", "from_pretrained")):
        unitune.from_pretrained(vit, model.save_pretrained(tmp_path / "peft"))


def test_not_a_vit_is_refused():
    with pytest.raises(UniTuneError, match="is not a timm VisionTransformer"):
        unitune.get_peft_model(nn.Linear(2, 2), subnet={"lora": 8})


# ---- counting ----------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["supernet", "fixed"])
def test_trainable_counts_equal_count_params_and_numel(variant, how, capsys):
    plain_total = sum(p.numel() for p in tiny_vit(variant).parameters())
    if how == "supernet":
        model = unitune.get_peft_model(tiny_vit(variant), space={"lora": [0, 2, 8], "adapter": [0, 4], "vpt": [0, 3],
                                                                 "ssf": [0, 1], "ssf_global": [0, 1]})
        model.set_subnet(MIX)
    else:
        model = unitune.get_peft_model(tiny_vit(variant), subnet={"lora": [8, 0, 2, 8], "ssf": [1, 1, 0, 1],
                                                                  "ssf_global": 1})
    analytic = count_params(model.capacity, BackboneDims.from_model(model), model.space)
    trainable, total = model.get_nb_trainable_parameters()
    peft, total_too = model.get_nb_trainable_parameters(head=False)
    assert peft == analytic.total and trainable == analytic.with_head and total_too == total
    assert trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert total == plain_total + analytic.total  # the PEFT layers add exactly their count to timm's model
    assert analytic.head == 64 * 5 + 5

    model.print_trainable_parameters()
    line = capsys.readouterr().out.strip()
    expected = (f"trainable params: {trainable:,} (PEFT {peft:,} + head {trainable - peft:,}) || all params: {total:,}"
                f" || trainable%: {100 * trainable / total:.4f} (without head: {100 * peft / total:.4f})")
    if how == "supernet":
        active = count_params(model.subnet, BackboneDims.from_model(model), model.space).total
        assert 0 < active < peft
        expected += f" || active subnet: {active:,} PEFT params"
    assert line == expected


def test_print_trainable_parameters_on_vit_b16_counts():
    """The README's LoRA r=8 figure on ViT-B/16 (built on the meta device: nothing allocated)."""
    import timm

    with torch.device("meta"):
        vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=100)
        model = unitune.get_peft_model(vit, subnet={"lora": 8})
    assert model.get_nb_trainable_parameters(head=False)[0] == 294_912
    assert model.get_nb_trainable_parameters()[0] == 294_912 + 768 * 100 + 100


# ---- optimizer ---------------------------------------------------------------------------------


def _train_steps(model: PeftViT, optimizer: torch.optim.Optimizer, steps: int = 3) -> None:
    x, y = images(4), torch.tensor([0, 1, 2, 3])
    model.train()
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_make_optimizer_leaves_inactive_slices_and_moments_bit_identical():
    def build():
        model = unitune.get_peft_model(tiny_vit(), space={"lora": [0, 2, 8], "adapter": [0, 2, 6], "ssf": [0, 1]})
        perturb(model)  # non-zero everywhere, so weight decay would move every idle entry
        model.set_subnet(sub(lora=[2, 2, 0, 8], adapter=[2, 0, 6, 2], ssf=[1, 0, 1, 0]))
        return model

    model = build()
    before = {n: p.detach().clone() for n, p in model.peft_named_parameters()}
    optimizer = unitune.make_optimizer(model, lr=1e-2, weight_decay=0.1)
    _train_steps(model, optimizer)
    lora = dict(model.peft_named_parameters())
    a, b = lora["blocks.0.lora.qkv.lora_A"], lora["blocks.0.lora.qkv.lora_B"]
    assert torch.equal(a[2:], before["blocks.0.lora.qkv.lora_A"][2:])  # rank 2 of 8 active
    assert torch.equal(b[:, 2:], before["blocks.0.lora.qkv.lora_B"][:, 2:])
    assert not torch.equal(a[:2], before["blocks.0.lora.qkv.lora_A"][:2])  # the active slice trained
    down = lora["blocks.0.adapter.down_weight"]  # width 2 of 6 active in block 0
    assert torch.equal(down[2:], before["blocks.0.adapter.down_weight"][2:])
    assert not torch.equal(down[:2], before["blocks.0.adapter.down_weight"][:2])
    idle = [n for n in lora if n.startswith(("blocks.1.ssf", "blocks.3.ssf", "blocks.1.adapter"))]  # off there
    assert len(idle) == 2 * 12 + 4 and all(torch.equal(lora[n], before[n]) for n in idle)
    state = optimizer.state[a]
    assert torch.count_nonzero(state["exp_avg"][2:]) == 0 and torch.count_nonzero(state["exp_avg_sq"][2:]) == 0
    assert torch.count_nonzero(state["exp_avg"][:2]) > 0
    assert isinstance(optimizer, torch.optim.AdamW)

    # The same steps with the stages' optimizer and no guard move those slices: the guard is what keeps them.
    plain = build()
    _train_steps(plain, build_optimizer(plain.trainable_named_parameters(), TrainConfig(lr=1e-2, weight_decay=0.1)))
    moved = dict(plain.peft_named_parameters())["blocks.0.lora.qkv.lora_A"]
    assert not torch.equal(moved[2:], before["blocks.0.lora.qkv.lora_A"][2:])


def test_make_optimizer_does_not_decay_prompts_biases_or_scales():
    """VPT's prompts are 2-d but, as every 1-d parameter, get no weight decay (the stages' rule)."""
    model = unitune.get_peft_model(tiny_vit(), subnet={"lora": 4, "vpt": 2, "ssf": 1})
    optimizer = unitune.make_optimizer(model, lr=1e-3, weight_decay=0.1)
    names = {id(p): n for n, p in model.trainable_named_parameters()}
    decayed = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    expected = {n for n, p in model.trainable_named_parameters() if p.ndim > 1 and ".vpt." not in n}
    assert decayed == expected and any(".lora." in n for n in decayed)
    assert not any(".vpt." in n for n in decayed)


def test_make_optimizer_checks_its_arguments():
    model = unitune.get_peft_model(tiny_vit(), subnet={"lora": 2})
    with pytest.raises(UniTuneError, match=r"^make_optimizer\.lr: expected a number > 0, got -0\.1$"):
        unitune.make_optimizer(model, lr=-0.1)
    with pytest.raises(UniTuneError, match=r"^make_optimizer\.weight_decay: expected a number >= 0, got -1$"):
        unitune.make_optimizer(model, weight_decay=-1)
    with pytest.raises(UniTuneError, match=r"^make_optimizer: expected a PeftViT \(from unitune.get_peft_model\), got VisionTransformer$"):
        unitune.make_optimizer(tiny_vit())


# ---- save_pretrained / from_pretrained ---------------------------------------------------------


def _supernet(variant: str = "cls") -> PeftViT:
    model = unitune.get_peft_model(tiny_vit(variant), space={"lora": [0, 2, 8], "adapter": [0, 4], "vpt": [0, 3],
                                                             "ssf": [0, 1], "ssf_global": [0, 1]})
    perturb(model)
    model.set_subnet(MIX)
    return model.eval()


def test_save_pretrained_round_trips_bit_for_bit(tmp_path, variant):
    model = _supernet(variant)
    folder = model.save_pretrained(tmp_path / "peft")
    assert sorted(p.name for p in folder.iterdir()) == ["peft_config.json", "peft_weights.safetensors"]
    config = json.loads((folder / "peft_config.json").read_text())
    assert config["backbone"] == "vit_tiny_patch16_224" and config["num_classes"] == 5
    assert Subnet.from_dict(config["subnet"]) == model.subnet and Subnet.from_dict(config["allocated"]) == model.capacity
    assert SearchSpace.from_dict(config["space"]) == model.space
    assert config["params"]["peft"] == count_params(model.capacity, BackboneDims.from_model(model), model.space).total
    # Only PEFT weights and the head are written, never the frozen backbone.
    import safetensors.torch

    saved = safetensors.torch.load_file(folder / "peft_weights.safetensors")
    assert saved.keys() == dict(model.trainable_named_parameters()).keys()

    restored = unitune.PeftModel.from_pretrained(tiny_vit(variant), folder)  # same seed: the same "pretrained" backbone
    assert not restored.training  # as HF PEFT's from_pretrained: ready for inference
    assert restored.subnet == model.subnet and restored.capacity == model.capacity and restored.space == model.space
    mine, theirs = model.trainable_state_dict(), restored.trainable_state_dict()
    assert mine.keys() == theirs.keys()
    for name in mine:
        assert mine[name].dtype == theirs[name].dtype and torch.equal(mine[name], theirs[name]), name
    with torch.no_grad():
        assert torch.equal(model(images()), restored(images()))
    assert unitune.from_pretrained(tiny_vit(variant), folder).subnet == model.subnet  # the module-level name too


def _untouched(vit: VisionTransformer, flags: list[bool]) -> bool:
    from unitune.supernet.methods.layers import PeftLayer

    return not any(isinstance(m, PeftLayer) for m in vit.modules()) and [p.requires_grad for p in vit.parameters()] == flags


def test_from_pretrained_errors_name_the_file_and_leave_the_vit_as_it_was(tmp_path):
    folder = _supernet().save_pretrained(tmp_path / "peft")
    config_path, weights = folder / "peft_config.json", folder / "peft_weights.safetensors"

    def refused(vit, message):
        flags = [p.requires_grad for p in vit.parameters()]
        with pytest.raises(UniTuneError, match=message) as err:
            unitune.from_pretrained(vit, folder)
        assert "\n" not in str(err.value)
        assert _untouched(vit, flags)

    refused(tiny_vit(num_classes=7), rf"^{re.escape(str(config_path))}: saved with a 5-class head, but the base model "
                                     r"has 7 classes; create it with num_classes=5$")
    refused(tiny_vit(depth=3), rf"^{re.escape(str(config_path))}: allocated: lists have 4 entries, but the backbone has 3 blocks$")
    refused(tiny_vit(embed_dim=32, num_heads=2),
            rf"^{re.escape(str(weights))}: blocks\.0\.lora\.qkv\.lora_A has shape \(8, 64\), expected \(8, 32\)$")

    # Names: a config edited to put LoRA on proj too no longer fits the weights.
    config = json.loads(config_path.read_text())
    edited = copy.deepcopy(config)
    edited["space"]["lora_targets"] = ["qkv", "proj"]
    config_path.write_text(json.dumps(edited))
    refused(tiny_vit(), rf"^{re.escape(str(weights))}: does not fit this model \(missing \['blocks\.0\.lora\.proj\.lora_A'")
    config_path.write_text(json.dumps(config))

    data = weights.read_bytes()
    weights.write_bytes(data[:-8] + bytes(8))
    refused(tiny_vit(), rf"^{re.escape(str(weights))}: sha256 [0-9a-f]{{12}}\.\.\. does not match peft_config\.json's")
    weights.write_bytes(data)

    config_path.write_text(json.dumps({**config, "format": "unitune-export"}))
    refused(tiny_vit(), rf"^{re.escape(str(config_path))}: 'format' is 'unitune-export', expected 'unitune-peft'$")
    config_path.unlink()
    refused(tiny_vit(), rf"^{re.escape(str(config_path))}: file not found$")
    with pytest.raises(UniTuneError, match=r"nowhere: folder not found; expected what save_pretrained writes"):
        unitune.from_pretrained(tiny_vit(), tmp_path / "nowhere")


def test_a_failed_load_leaves_the_head_as_it_was(tmp_path):
    """The head is copied before a later tensor is found not to fit: the load puts it back."""
    import hashlib

    import safetensors.torch

    folder = _supernet().save_pretrained(tmp_path / "peft")
    weights, config_path = folder / "peft_weights.safetensors", folder / "peft_config.json"
    state = safetensors.torch.load_file(weights)
    state["head.bias"] = torch.zeros(6)  # head.weight fits, head.bias (loaded after it) does not
    weights.write_bytes(safetensors.torch.save(state))
    config = json.loads(config_path.read_text())
    config["weights"]["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    config_path.write_text(json.dumps(config))
    vit = tiny_vit()
    head = vit.head.weight.detach().clone()
    flags = [p.requires_grad for p in vit.parameters()]
    with pytest.raises(UniTuneError, match=rf"^{re.escape(str(weights))}: head\.bias has shape \(6,\), expected \(5,\)$"):
        unitune.from_pretrained(vit, folder)
    assert torch.equal(vit.head.weight, head) and _untouched(vit, flags)


def test_save_pretrained_refuses_a_file_and_writes_nothing(tmp_path):
    target = tmp_path / "peft"
    target.write_text("not a folder")
    with pytest.raises(UniTuneError, match=rf"^{re.escape(str(target))}: exists and is not a folder"):
        _supernet().save_pretrained(target)
    assert target.read_text() == "not a folder" and sorted(p.name for p in tmp_path.iterdir()) == ["peft"]


def test_save_pretrained_overwrites_an_earlier_save(tmp_path):
    first = _supernet()
    first.save_pretrained(tmp_path / "peft")
    second = unitune.get_peft_model(tiny_vit(), subnet={"lora": 2})
    perturb(second, seed=3)
    second.save_pretrained(tmp_path / "peft")
    assert sorted(p.name for p in (tmp_path / "peft").iterdir()) == ["peft_config.json", "peft_weights.safetensors"]
    restored = unitune.from_pretrained(tiny_vit(), tmp_path / "peft")
    assert restored.capacity == Subnet.uniform(DEPTH, lora=2)
    assert all(torch.equal(v, restored.trainable_state_dict()[k]) for k, v in second.trainable_state_dict().items())


# ---- merge_and_unload --------------------------------------------------------------------------


@pytest.mark.parametrize("ssf_global", [0, 1])
def test_merge_and_unload_gives_a_plain_timm_model(variant, ssf_global):
    import warnings

    model = unitune.get_peft_model(tiny_vit(variant), space={"lora": [0, 2, 8], "ssf": [0, 1], "ssf_global": [0, 1]})
    perturb(model)
    model.set_subnet(sub(lora=[8, 2, 0, 8], ssf=[1, 0, 1, 1], ssf_global=ssf_global))
    model.eval()
    active = model.subnet
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        merged = model.merge_and_unload()
    assert type(merged) is VisionTransformer
    # A qkv_bias=False model gets qkv biases from the SSF on qkv: the warning names the keyword.
    extra = {"qkv_bias": True} if variant == "no_qkv_bias" else {}
    assert [str(w.message) for w in caught] == (
        ["merge_and_unload: folding SSF created biases; the merged structure is timm.create_model(..., qkv_bias=True)"]
        if extra else [])
    fresh = tiny_vit(variant, seed=7, **extra)
    fresh.load_state_dict(merged.state_dict(), strict=True)
    with torch.no_grad():
        expected = model(images())
        assert (fresh.eval()(images()) - expected).abs().max() <= 1e-5
        assert (merged(images()) - expected).abs().max() <= 1e-5
    # The PeftViT is untouched: same weights, same active subnet.
    assert model.subnet == active
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("sizes, method", [({"bitfit": 1}, "BitFit"), ({"ssf": 1}, "SSF"),
                                           ({"ssf": 1, "bitfit": 1}, "BitFit")])  # BitFit folds first: SSF finds the bias
def test_merge_and_unload_warning_names_the_method_that_created_the_biases(sizes, method):
    """On a ``qkv_bias=False`` model, BitFit's qkv bias has nowhere to fold but a new bias: the
    warning named SSF whatever did it."""
    import warnings

    model = unitune.get_peft_model(tiny_vit("no_qkv_bias"), subnet=sizes)
    perturb(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        merged = model.merge_and_unload()
    assert [str(w.message) for w in caught] == [
        f"merge_and_unload: folding {method} created biases; the merged structure is "
        f"timm.create_model(..., qkv_bias=True)"]
    with torch.no_grad():
        assert (merged.eval()(images()) - model.eval()(images())).abs().max() <= 1e-5


@pytest.mark.parametrize("sizes,message", [
    ({"lora": 8, "adapter": [4, 0, 4, 0]}, r"^merge_and_unload: the active subnet's adapter \(blocks 0, 2\) does not fold "
                                          r"into the weights; unitune\.supernet\.merge\.merge\(model\)\.model keeps them as modules$"),
    ({"ssf": 1, "adapter": [0, 4, 0, 0], "vpt": [0, 0, 0, 3]},
     r"^merge_and_unload: the active subnet's adapter \(block 1\) and vpt \(block 3\) do not fold into the weights"),
])
def test_merge_and_unload_names_what_does_not_fold(sizes, message):
    model = unitune.get_peft_model(tiny_vit(), subnet=sizes)
    with pytest.raises(UniTuneError, match=message):
        model.merge_and_unload()


def test_merge_and_unload_of_a_supernet_whose_active_subnet_folds():
    """A supernet holds adapters, but a subnet with them at size 0 folds whole."""
    model = _supernet()
    model.set_subnet(Subnet.uniform(DEPTH, lora=2, ssf=1))
    merged = model.merge_and_unload()
    fresh = tiny_vit(seed=3)
    fresh.load_state_dict(merged.state_dict(), strict=True)
    with torch.no_grad():
        assert (fresh.eval()(images()) - model(images())).abs().max() <= 1e-5


# ---- materialize -------------------------------------------------------------------------------


def test_materialize_leaves_the_source_active_subnet_alone():
    model = _supernet()
    active = model.subnet
    sizes = {name: layer.size for name, layer in model.named_layers.items()}
    with torch.no_grad():
        expected = model(images())
    small = model.materialize(Subnet.uniform(DEPTH, lora=8, adapter=4))
    assert small.subnet == Subnet.uniform(DEPTH, lora=8, adapter=4)
    assert model.subnet == active
    assert {name: layer.size for name, layer in model.named_layers.items()} == sizes
    with torch.no_grad():
        assert torch.equal(model(images()), expected)
    # A subnet beyond the capacity is refused, and leaves no layer half set either.
    with pytest.raises(UniTuneError, match=r"vpt\[0\] = 5 exceeds this model's allocated size 3"):
        model.materialize(Subnet.uniform(DEPTH, lora=8, vpt=5))
    assert model.subnet == active and {name: layer.size for name, layer in model.named_layers.items()} == sizes


def test_set_subnet_and_materialize_take_what_get_peft_model_takes(tmp_path):
    """A dict (one size per method for every block, or a list per block), the file layout or a
    file's path, as ``get_peft_model(subnet=...)``; it raised a raw AttributeError on a dict."""
    model = _supernet()
    want = Subnet.uniform(DEPTH, lora=8, adapter=4).replace(vpt=(0, 3, 3, 0))
    model.set_subnet({"lora": 8, "adapter": 4, "vpt": [0, 3, 3, 0]})
    assert model.subnet == want
    model.set_subnet(MIX)
    model.set_subnet({"subnet": {"lora": [8] * DEPTH, "adapter": 4, "vpt": (0, 3, 3, 0)}})
    assert model.subnet == want
    path = tmp_path / "s.yaml"
    path.write_text("subnet:\n  lora: 8\n  adapter: 4\n  vpt: [0, 3, 3, 0]\n")
    model.set_subnet(MIX)
    model.set_subnet(str(path))
    assert model.subnet == want
    assert model.materialize({"lora": 8, "adapter": 4, "vpt": [0, 3, 3, 0]}).subnet == want
    with pytest.raises(UniTuneError, match=r"^set_subnet: subnet must be a Subnet, a subnet file or a dict like "
                                           r"\{'lora': 8\}, got list$"):
        model.set_subnet([8, 8, 8, 8])
    with pytest.raises(UniTuneError, match=r"vpt\[0\] = 5 exceeds this model's allocated size 3"):
        model.set_subnet({"vpt": 5})


# ---- the README's notebook example -------------------------------------------------------------


def readme_example() -> str:
    text = README.read_text()
    match = re.search(r"<!-- python-api-example[^>]*-->\n```python\n(.*?)```", text, re.S)
    assert match, "README.md: the Python API example (marked <!-- python-api-example ... -->) is missing"
    return match.group(1)


def test_readme_python_api_example_runs(tmp_path, monkeypatch, capsys):
    code = readme_example()
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, f"{README}:python-api-example", "exec"), namespace)
    # It did what it says: a plain timm model, the two files, and the counts line it shows.
    assert type(namespace["merged"]) is VisionTransformer
    assert sorted(p.name for p in (tmp_path / "my_peft").iterdir()) == ["peft_config.json", "peft_weights.safetensors"]
    printed = capsys.readouterr().out.strip()
    assert f"# {printed}\n" in code, f"the README shows a different count line than the code prints: {printed}"
    # The LoRA+SSF+BitFit+DoRA model the issue asks the example to show, every block, with the
    # count of DESIGN.md's formulas (d = 64, 4 blocks): LoRA r=8 on qkv 4dr, SSF 22d, BitFit 11d,
    # DoRA r=4 on qkv r(d + 3d) + 3d.
    subnet, d = namespace["model"].subnet, 64
    assert [set(subnet.sizes(m)) for m in ("lora", "ssf", "bitfit", "dora")] == [{8}, {1}, {1}, {4}]
    assert f"PEFT {4 * (4 * d * 8 + 22 * d + 11 * d + 4 * 4 * d + 3 * d):,} + head" in printed


def test_save_pretrained_round_trips_bfloat16(tmp_path):
    model = _supernet().to(torch.bfloat16)
    model.save_pretrained(tmp_path / "peft")
    restored = unitune.from_pretrained(tiny_vit().to(torch.bfloat16), tmp_path / "peft")
    for name, value in model.trainable_state_dict().items():
        got = restored.trainable_state_dict()[name]
        assert got.dtype == torch.bfloat16 and torch.equal(got, value), name


def test_import_unitune_alone_loads_no_torch():
    """The API names resolve on first use, so the CLI's and errors' imports stay light."""
    import subprocess
    import sys

    code = ("import sys, unitune; assert 'torch' not in sys.modules, 'torch imported'; "
            "assert unitune.get_peft_model.__module__ == 'unitune.supernet.api'; assert 'get_peft_model' in dir(unitune)")
    subprocess.run([sys.executable, "-c", code], check=True)
