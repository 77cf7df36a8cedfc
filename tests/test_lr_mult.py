"""A learning-rate multiplier per optimiser family (``TrainConfig.lr_mult``, ``make_optimizer(lr_mult=)``).

Each registered method declares its family; the optimizer gets one pair of groups (decay / no
decay) per family at ``lr * multiplier``, and timm's scheduler keeps the ratios. Checked on the
optimizer's groups, on the scheduler's rates, and on the size of AdamW's first update (which is
``lr`` per element whatever the gradient's scale), so the multiplier is seen to reach the weights.
"""

from __future__ import annotations

import math

import pytest
import torch
from tiny import tiny_vit

from unitune.engine.config import TrainConfig, load_run_config
from unitune.engine.train import build_optimizer, build_scheduler, plain_family
from unitune.errors import UniTuneError
from unitune.supernet import PeftViT, SearchSpace, Subnet
import unitune.supernet.methods as methods_module
from unitune.supernet.methods import METHODS, families, register_method
from unitune.supernet.wrap import make_optimizer

# The families by the layer name a method's parameters sit under (a second reading of the
# registry's declarations, from the names alone).
BY_LAYER = {"lora": "low_rank", "dora": "low_rank", "vera": "low_rank", "adapter": "adapter",
            "adapter_plus": "adapter", "vpt": "prompt", "ssf": "scale_shift", "ssf_global": "scale_shift",
            "bitfit": "scale_shift"}
MULT = {"prompt": 10.0, "head": 2.0, "scale_shift": 5.0, "adapter": 0.5}
SUBNET = Subnet.uniform(4, lora=2, adapter=2, vpt=2, ssf=1, ssf_global=1)


def expected_family(name: str) -> str:
    if name.startswith("head."):
        return "head"
    parts = name.split(".")
    method = parts[2] if parts[0] == "blocks" else parts[0]
    return BY_LAYER[method]


def model() -> PeftViT:
    return PeftViT(tiny_vit(), SearchSpace(lora=(0, 2), adapter=(0, 2), vpt=(0, 2), ssf=(0, 1), ssf_global=(0, 1)),
                   sizes=SUBNET)


def group_of(optimizer: torch.optim.Optimizer) -> dict[int, dict]:
    return {id(p): g for g in optimizer.param_groups for p in g["params"]}


def test_every_registered_method_declares_a_known_family():
    assert {m.name: m.family for m in METHODS.values()} == BY_LAYER
    assert families() == ("head", "backbone", "low_rank", "adapter", "prompt", "scale_shift")


def test_a_method_with_an_unusable_family_is_refused_at_registration():
    lora = METHODS["lora"]
    for family in ("head", "backbone", "two words", 3):
        odd = type("Odd", (type(lora),), {"name": "odd_family", "family": family})()
        with pytest.raises(ValueError, match=r"odd_family\.family must name its optimiser family"):
            register_method(odd)
    assert "odd_family" not in METHODS


def test_a_method_that_names_no_family_gets_one_of_its_own(monkeypatch):
    lora = METHODS["lora"]
    monkeypatch.setattr(methods_module, "METHODS", dict(METHODS))  # the registry as it was, after the test
    odd = register_method(type("Odd", (type(lora),), {"name": "own_family", "family": "", "options": ()})())
    assert odd.family == "own_family" and "own_family" in methods_module.families()


def test_each_family_trains_at_its_multiplier_and_keeps_its_weight_decay_rule():
    peft = model()
    optimizer = make_optimizer(peft, lr=1e-3, weight_decay=0.05, lr_mult=MULT)
    groups = group_of(optimizer)
    named = dict(peft.trainable_named_parameters())
    assert len(groups) == len(named)  # every trainable tensor in exactly one group
    seen = set()
    for name, p in named.items():
        family = expected_family(name)
        seen.add(family)
        group = groups[id(p)]
        assert group["family"] == family == peft.param_family(name), name
        assert math.isclose(group["lr"], 1e-3 * MULT.get(family, 1.0), rel_tol=1e-12), name
        no_decay = p.ndim <= 1 or name.endswith("vpt.prompts")
        assert group["weight_decay"] == (0.0 if no_decay else 0.05), name
    assert seen == {"low_rank", "adapter", "prompt", "scale_shift", "head"}


def test_without_multipliers_the_two_old_groups_stay():
    for lr_mult in (None, {}, {"prompt": 1, "head": 1.0}):
        optimizer = make_optimizer(model(), lr=1e-3, weight_decay=0.05, lr_mult=lr_mult)
        assert [g["weight_decay"] for g in optimizer.param_groups] == [0.05, 0.0]
        assert all(g["lr"] == 1e-3 and "family" not in g for g in optimizer.param_groups)


def test_the_scheduler_keeps_each_familys_ratio_through_warmup_and_decay():
    peft = model()
    cfg = TrainConfig(epochs=3, lr=1e-3, warmup_epochs=1, min_lr=0.0, lr_mult=MULT)
    optimizer = build_optimizer(peft.trainable_named_parameters(), cfg, peft.no_weight_decay(), peft.param_family)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch=4)
    lrs = []
    for step in range(12):
        scheduler.step_update(step)
        base = next(g["lr"] for g in optimizer.param_groups if g["family"] == "low_rank")
        lrs.append(base)
        for g in optimizer.param_groups:
            assert math.isclose(g["lr"], base * MULT.get(g["family"], 1.0), rel_tol=1e-9, abs_tol=1e-15)
    assert max(lrs) == pytest.approx(1e-3) and lrs[0] < lrs[4] and lrs[-1] < lrs[4]  # warm-up, then decay


def test_adamws_first_update_moves_each_family_by_its_rate():
    # AdamW's first step (no weight decay) moves every element with a gradient by lr * g / (|g| + eps),
    # i.e. by lr: so each tensor's largest move is its family's rate, whatever its gradient's scale.
    torch.manual_seed(0)
    peft = model()
    for _, p in peft.peft_named_parameters():  # LoRA's B and the adapters' up start at zero: give them a value
        torch.nn.init.normal_(p, std=0.02)
    named = dict(peft.trainable_named_parameters())
    before = {n: p.detach().clone() for n, p in named.items()}
    optimizer = make_optimizer(peft, lr=1e-3, weight_decay=0.0, lr_mult=MULT)
    (1e7 * peft(torch.randn(4, 3, 32, 32)).logsumexp(-1).sum()).backward()  # the scale leaves Adam's step as it is
    grads = {n: p.grad.detach().clone() for n, p in named.items()}
    optimizer.step()
    for name, p in named.items():
        moved = (p.detach() - before[name]).abs()
        strong = grads[name].abs() > 1e-4  # where eps (1e-8) is negligible
        assert strong.any(), name
        rate = 1e-3 * MULT.get(expected_family(name), 1.0)
        torch.testing.assert_close(moved[strong], torch.full_like(moved[strong], rate), rtol=1e-3, atol=0)


def test_full_fine_tuning_splits_head_and_backbone():
    vit = tiny_vit()
    cfg = TrainConfig(lr=1e-3, lr_mult={"backbone": 0.1, "head": 10})
    optimizer = build_optimizer(vit.named_parameters(), cfg, family_of=plain_family(vit))
    groups = group_of(optimizer)
    for name, p in vit.named_parameters():
        want = 1e-2 if name.startswith("head.") else 1e-4
        assert math.isclose(groups[id(p)]["lr"], want, rel_tol=1e-12), name


def test_the_config_checks_lr_mult_in_one_line(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("model: {backbone: vit_tiny_patch16_224}\ndata: {source: synthetic}\n")
    run = load_run_config(config, ["retrain.lr_mult={prompt: 10, head: 2}"])
    assert run.retrain.lr_mult == {"prompt": 10, "head": 2}
    assert run.section("retrain")["lr_mult"] == {"prompt": 10, "head": 2}
    # unset, it is not written: a checkpoint fingerprinted before lr_mult existed still resumes
    assert "lr_mult" not in load_run_config(config).section("retrain")
    cases = {
        "retrain.lr_mult={promt: 10}": r"retrain\.lr_mult: unknown family 'promt', expected some of \['head', "
                                       r"'backbone', 'low_rank', 'adapter', 'prompt', 'scale_shift'\]$",
        "supernet.lr_mult={prompt: 0}": r"supernet\.lr_mult\.prompt: expected a finite number > 0, got 0$",
        "retrain.lr_mult={head: .nan}": r"retrain\.lr_mult\.head: expected a finite number > 0, got nan$",
        "retrain.lr_mult={head: true}": r"retrain\.lr_mult\.head: expected a finite number > 0, got True$",
        "retrain.lr_mult=3": r"retrain\.lr_mult: expected a mapping",
    }
    for override, message in cases.items():
        with pytest.raises(UniTuneError, match=rf"^{config}: {message}"):
            load_run_config(config, [override])


def test_make_optimizer_checks_its_multipliers():
    with pytest.raises(UniTuneError, match=r"^make_optimizer: lr_mult: unknown family 'lora'"):
        make_optimizer(model(), lr_mult={"lora": 2})
    with pytest.raises(UniTuneError, match=r"^make_optimizer: lr_mult\.prompt: expected a finite number > 0, got -1"):
        make_optimizer(model(), lr_mult={"prompt": -1})


def test_the_logged_rate_is_the_schedules_before_multipliers():
    """base_lr (what pretrain, supernet and retrain log) reads the first group's rate over its
    multiplier: the schedule's own rate, whichever family the first group holds."""
    from unitune.engine.train import base_lr

    peft = model()
    cfg = TrainConfig(epochs=3, lr=1e-3, warmup_epochs=0, min_lr=0.0, lr_mult={"low_rank": 4.0, "prompt": 10.0})
    optimizer = build_optimizer(peft.trainable_named_parameters(), cfg, peft.no_weight_decay(), peft.param_family)
    assert optimizer.param_groups[0]["family"] == "low_rank" and optimizer.param_groups[0]["lr"] == pytest.approx(4e-3)
    assert base_lr(optimizer) == pytest.approx(1e-3)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch=4)
    scheduler.step_update(6)
    prompt = next(g for g in optimizer.param_groups if g["family"] == "prompt")
    assert base_lr(optimizer) == pytest.approx(prompt["lr"] / 10.0)  # the same for every family
    assert base_lr(optimizer) < 1e-3  # decayed
    plain = make_optimizer(model(), lr=2e-3)
    assert base_lr(plain) == 2e-3
