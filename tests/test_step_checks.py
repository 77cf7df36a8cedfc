"""The training loop's health checks read the device in batches, not every step (StepChecks).

On a GPU each host read of a tensor's value (``.item()``, ``bool(t)``, ``.tolist()``) waits for
all queued work; three a step made a ViT-B supernet step 1.32x slower on an H200. These tests count
the reads unitune's own code makes (the optimizer's reads of its CPU step counters are torch's and
cost no synchronisation), and check that a non-finite loss or weight still fails the run, naming
the step, before the caller could save anything.
"""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from unitune.engine.config import TrainConfig
from unitune.errors import UniTuneError
from unitune.engine.train import CHECK_EVERY, Criterion, StepChecks, build_optimizer, build_scheduler, train_epoch

CLASSES = 3


class HostReads:
    """Counts the tensor reads (item, bool, int, float, tolist) made from unitune's modules."""

    def __init__(self, monkeypatch):
        self.count = 0
        for name in ("item", "__bool__", "__int__", "__float__", "tolist"):
            real = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._counted(real))

    def _counted(self, real):
        def read(tensor, *args, **kwargs):
            if sys._getframe(1).f_globals.get("__name__", "").startswith("unitune"):
                self.count += 1
            return real(tensor, *args, **kwargs)
        return read


def batches(n: int, nan_at: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(1, n + 1):
        x = torch.randn(4, 6, generator=g)
        if i == nan_at:
            x[0, 0] = float("nan")
        out.append((x, torch.arange(4) % CLASSES))
    return out


def epoch(loader, log_every: int = 0):
    torch.manual_seed(0)
    model = nn.Linear(6, CLASSES)
    cfg = TrainConfig(epochs=1, lr=0.01, warmup_epochs=0, log_every=log_every)
    optimizer = build_optimizer(model.named_parameters(), cfg)
    scheduler = build_scheduler(optimizer, cfg, len(loader))
    loss, step = train_epoch(model, loader, optimizer, scheduler, Criterion(cfg, CLASSES), cfg,
                             torch.device("cpu"), 0, "retrain epoch 1/1", False)
    return model, loss, step


def test_reads_do_not_grow_with_the_steps(monkeypatch):
    reads = HostReads(monkeypatch)
    epoch(batches(5), log_every=1000)
    few = reads.count
    reads.count = 0
    epoch(batches(40), log_every=1000)
    # the flush at the end (the losses, then the weights): as many reads for 5 steps as for 40
    assert reads.count == few == 2

    # With the default interval, one more flush per CHECK_EVERY steps and nothing else.
    reads.count = 0
    epoch(batches(2 * CHECK_EVERY + 3))
    assert reads.count == 3 * 2  # at steps 25 and 50, and at the end


def test_mean_loss_is_the_mean_of_the_steps_losses():
    """The epoch's loss read in batches equals the plain per-step mean (a second computation)."""
    loader = batches(30)
    _, loss, step = epoch(loader, log_every=7)
    torch.manual_seed(0)
    model = nn.Linear(6, CLASSES)
    cfg = TrainConfig(epochs=1, lr=0.01, warmup_epochs=0)
    optimizer = build_optimizer(model.named_parameters(), cfg)
    scheduler = build_scheduler(optimizer, cfg, len(loader))
    criterion, losses = Criterion(cfg, CLASSES), []
    for i, (x, y) in enumerate(loader, start=1):
        optimizer.zero_grad(set_to_none=True)
        out = criterion(model(x).float(), y)
        out.backward()
        optimizer.step()
        scheduler.step_update(i)
        losses.append(out.item())
    assert step == 30
    assert loss == pytest.approx(sum(losses) / len(losses), rel=1e-6)


def test_a_non_finite_loss_fails_naming_its_step():
    with pytest.raises(UniTuneError, match=r"^retrain epoch 1/1 step 7: the loss is nan \(not finite\); "
                                           r"lower the learning rate$"):
        epoch(batches(12, nan_at=7), log_every=1000)  # read only at the end: still step 7 is named


def test_flush_checks_the_weights_after_the_losses():
    good, bad = nn.Parameter(torch.ones(2)), nn.Parameter(torch.tensor([1.0, float("inf")]))
    checks = StepChecks([("a", good), ("blocks.1.lora.a", bad)], every=2)
    checks.add(torch.tensor(0.5), "supernet epoch 1 step 1")
    assert checks.step_done() is False  # not yet due: nothing read
    checks.add(torch.tensor(1.5), "supernet epoch 1 step 2")
    with pytest.raises(UniTuneError, match=r"^supernet epoch 1 step 2: the update made blocks\.1\.lora\.a non-finite"):
        checks.step_done()
    # The losses were finite and are counted; the weight check came after them.
    assert checks.count == 2 and checks.mean_loss == pytest.approx(1.0)
