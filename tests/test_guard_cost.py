"""The guard's per-step work (issue 13): decided from shapes on the host, no masks.

A ``TorchDispatchMode`` records every aten op the guard's pre-step hook runs. On a GPU,
``aten._local_scalar_dense`` (``bool(t)``, ``t.item()``) is a host-device synchronisation, and every
op is a kernel launch; the CPU runs the same ops, so what the hook *asks for* is checked here.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from unitune.engine.config import TrainConfig
from unitune.supernet import PeftViT, SearchSpace, Subnet
from unitune.supernet.guard import InactiveGuard, active_masks
from unitune.engine.train import build_optimizer

from tiny import TINY, tiny_vit


class Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names: list[str] = []
        self.bool_outputs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.names.append(func.overloadpacket.__name__)
        outs = out if isinstance(out, (tuple, list)) else [out]
        self.bool_outputs += sum(torch.is_tensor(o) and o.dtype == torch.bool for o in outs)
        return out


def setup(space: SearchSpace):
    torch.manual_seed(0)
    model = PeftViT(tiny_vit(num_classes=5), space)
    optimizer = build_optimizer(model.trainable_named_parameters(), TrainConfig(lr=1e-2, weight_decay=0.05))
    guard = InactiveGuard(model, optimizer)
    images, labels = torch.randn(2, 3, TINY["img_size"], TINY["img_size"]), torch.tensor([0, 1])
    model.train()

    def step(subnet: Subnet) -> Ops:
        model.set_subnet(subnet)
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        ops = Ops()
        with ops:
            guard._before(optimizer, (), {})
        snapshot = [(p, idle) for p, idle, _, _ in guard._saved]
        guard._saved = []  # the hook runs again inside step()
        optimizer.step()
        step.saved = snapshot
        return ops

    return model, step


def test_guard_step_never_syncs_and_builds_masks_once():
    space = SearchSpace(lora_targets=("qkv", "proj", "fc1", "fc2"))
    model, step = setup(space)
    mid = Subnet(lora=(4, 0, 10, 1), adapter=(8, 5, 0, 10), vpt=(5, 0, 1, 10), ssf=(1, 0, 1, 0), ssf_global=1)
    step(mid)
    ops = step(mid)  # the second step of the same sizes: every mask is cached
    assert "_local_scalar_dense" not in ops.names and "all" not in ops.names, sorted(set(ops.names))
    assert ops.bool_outputs == 0
    # Snapshots only of the partly used tensors: a second computation from the full masks.
    partly = {n for n, m in active_masks(model).items() if not bool(m.all())}
    params = dict(model.peft_named_parameters())
    saved = {id(p) for p, _ in step.saved}
    assert saved == {id(params[n]) for n in partly} and 0 < len(partly) < len(params)
    masks = active_masks(model)
    names = {id(p): n for n, p in params.items()}
    for p, idle in step.saved:  # the index is exactly the idle entries: a second computation
        region = torch.zeros(p.shape, dtype=torch.bool)
        region[idle] = True
        assert torch.equal(region, ~masks[names[id(p)]]), names[id(p)]
    assert any(idle == (...,) for _, idle in step.saved) and any(idle != (...,) for _, idle in step.saved)


def test_largest_subnet_step_snapshots_nothing():
    space = SearchSpace(lora_targets=("qkv", "proj", "fc1", "fc2"))
    _, step = setup(space)
    ops = step(Subnet.largest(space, 4))
    assert ops.names == [] and step.saved == []


class ReferenceGuard(InactiveGuard):
    """The guard as it was before (full masks every step), kept here as the second computation."""

    def _before(self, optimizer, args, kwargs) -> None:
        params = dict(self.model.peft_named_parameters())
        self._saved = []
        for name, mask in self.used_masks().items():
            if bool(mask.all()):
                continue
            p = params[name]
            state = optimizer.state.get(p)
            moments = None if not state else {k: v.detach().clone() for k, v in state.items()
                                              if torch.is_tensor(v) and v.shape == p.shape}
            self._saved.append((p, mask, p.detach().clone(), moments))

    @torch.no_grad()
    def _after(self, optimizer, args, kwargs) -> None:
        for p, mask, saved, moments in self._saved:
            p.copy_(torch.where(mask, p, saved))
            for key, value in optimizer.state.get(p, {}).items():
                if torch.is_tensor(value) and value.shape == p.shape:
                    before = moments[key] if moments is not None and key in moments else torch.zeros_like(value)
                    value.copy_(torch.where(mask, value, before))
        self._saved = []
        self._used = None


def test_guard_matches_the_previous_one_bit_for_bit():
    """Weights and AdamW moments after sandwich-like steps (two subnets a step, union protected)
    and a step with no recorded forward pass: identical to the previous guard's."""
    import random

    space = SearchSpace(lora_targets=("qkv", "proj", "fc1", "fc2"))
    rng = random.Random(3)
    pick = lambda m: tuple(rng.choice(space.choices(m)) for _ in range(4))  # noqa: E731
    steps = [[Subnet(pick("lora"), pick("adapter"), pick("vpt"), pick("ssf"), rng.choice(space.ssf_global))
              for _ in range(2)] for _ in range(4)]
    images, labels = torch.randn(2, 3, TINY["img_size"], TINY["img_size"]), torch.tensor([0, 1])
    runs = []
    for guard_type in (InactiveGuard, ReferenceGuard):
        torch.manual_seed(0)
        model = PeftViT(tiny_vit(num_classes=5), space).train()
        optimizer = build_optimizer(model.trainable_named_parameters(), TrainConfig(lr=1e-2, weight_decay=0.05))
        guard_type(model, optimizer)
        for subnets in steps:
            optimizer.zero_grad(set_to_none=True)
            for subnet in subnets:
                model.set_subnet(subnet)
                torch.nn.functional.cross_entropy(model(images), labels).backward()
            optimizer.step()
        model.set_subnet(steps[0][0])  # no forward pass: the active subnet is protected
        for _, p in model.peft_named_parameters():
            p.grad = torch.ones_like(p)
        optimizer.step()
        runs.append((dict(model.peft_named_parameters()), optimizer))
    (new, opt_new), (old, opt_old) = runs
    for name in old:
        assert torch.equal(new[name], old[name]), name
        for key, value in opt_old.state[old[name]].items():
            assert torch.equal(opt_new.state[new[name]][key], value), (name, key)


def test_evaluation_between_steps_does_not_widen_what_the_next_step_updates():
    """evaluate() runs without autograd: the supernet's end-of-epoch evaluation of the largest
    subnet must not count as a used forward pass, or the next (smaller) step would let weight
    decay move every entry the largest subnet has."""
    from unitune.engine.train import evaluate

    space = SearchSpace(lora_targets=("qkv", "proj", "fc1", "fc2"))
    torch.manual_seed(0)
    model = PeftViT(tiny_vit(num_classes=5), space).train()
    optimizer = build_optimizer(model.trainable_named_parameters(), TrainConfig(lr=1e-2, weight_decay=0.05))
    InactiveGuard(model, optimizer)
    images, labels = torch.randn(2, 3, TINY["img_size"], TINY["img_size"]), torch.tensor([0, 1])
    model.set_subnet(Subnet.largest(space, 4))
    evaluate(model, [(images, labels)], torch.device("cpu"), 5)
    # Partly used layers (a size-0 layer gets no gradient, so AdamW would skip it anyway).
    model.set_subnet(Subnet(lora=(4, 0, 10, 1), adapter=(8, 5, 0, 10), vpt=(5, 0, 1, 10), ssf=(1, 0, 1, 0),
                            ssf_global=1))
    masks = active_masks(model)
    before = {n: p.detach().clone() for n, p in model.peft_named_parameters()}
    optimizer.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(images), labels).backward()
    optimizer.step()
    idle = 0
    for name, p in model.peft_named_parameters():
        assert torch.equal(p.detach()[~masks[name]], before[name][~masks[name]]), name
        idle += int((~masks[name]).sum())
    assert idle > 0
