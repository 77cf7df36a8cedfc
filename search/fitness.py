"""The search's fitness (``search.fitness``): validation accuracy of a subnet with the weights it
inherits from the trained supernet (``supernet``), or after training it alone for a few epochs
(``standalone``, no supernet needed). Never the test split.

The validation images are decoded and transformed once (the same pipeline, from the same timm
data config, as in supernet training) and kept as tensors, so a trial costs only its forward
passes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import torch

from unitune.engine.config import RunConfig
from unitune.engine.context import RunContext
from unitune.data import build_dataset, build_loader, build_transform, resolve_data_config
from unitune.errors import UniTuneError
from unitune.engine.pretrain import pretrained_weights
from unitune.supernet import PeftViT, Subnet
from unitune.supernet.store import check_compatible, read_supernet
from unitune.engine.supernet_train import build_model
from unitune.engine.train import evaluate


def load_trained_supernet(run: RunConfig | RunContext, out: str | Path | None = None,
                          supernet_file: str | Path | None = None,
                          device: torch.device | None = None) -> tuple[PeftViT, dict]:
    """The supernet of ``run`` with its trained weights, and the file's metadata."""
    ctx = RunContext.of(run, out)
    path = Path(supernet_file) if supernet_file else ctx.layout.supernet
    tensors, meta = read_supernet(path)
    check_compatible(meta, path, ctx.run.model.backbone, ctx.space.to_dict())
    device = device or ctx.device
    model = build_model(ctx, meta["num_classes"], device, pretrained_weights(ctx.run, ctx.out))
    model.load_trainable_state_dict({k: v.to(device) for k, v in tensors.items()}, source=str(path))
    return model.eval(), {**meta, "path": str(path)}


class SupernetFitness:
    """``fitness(subnet) -> val accuracy`` with inherited weights; call it as Optuna trials run."""

    def __init__(self, run: RunConfig | RunContext, out: str | Path | None = None,
                 supernet_file: str | Path | None = None):
        ctx = RunContext.of(run, out)
        run = ctx.run
        self.device = ctx.device
        self.model, self.meta = load_trained_supernet(ctx, None, supernet_file, self.device)
        data_config = resolve_data_config(self.model.vit)
        if json.loads(json.dumps(data_config)) != self.meta["data_config"]:  # the NOAH defect: stages normalising differently
            raise UniTuneError(f"{self.meta['path']}: trained with data config {self.meta['data_config']}, "
                               f"but this run resolves {data_config}")
        val = build_dataset(run.data, "val", build_transform(data_config, train=False, cfg=run.data))
        if val.num_classes != self.meta["num_classes"]:
            raise UniTuneError(f"{self.meta['path']}: trained for {self.meta['num_classes']} classes, "
                               f"the data has {val.num_classes}")
        self.num_classes = val.num_classes
        self.batches = [(x.to(self.device), y.to(self.device))
                        for x, y in build_loader(val, run.data, train=False, seed=0)]
        self.amp = run.supernet.amp
        self._parts: list | None = None
        self.last_cost: dict = {}

    @property
    def num_images(self) -> int:
        return sum(len(y) for _, y in self.batches)

    def __call__(self, subnet: Subnet) -> float:
        self.model.set_subnet(subnet)
        accuracy = evaluate(self.model, self.batches, self.device, self.num_classes, self.amp)["accuracy"]
        self.last_cost = {"val_images_seen": self.num_images}
        return accuracy

    n_stages = 4  # fidelities of ``staged``: 1/4, 1/2, 3/4 and all of the val images

    def staged(self, subnet: Subnet) -> Iterator[tuple[int, float]]:
        """``(step, accuracy on the first step/4 of the val images)`` for steps 1..4, counted
        cumulatively (each image is scored once), for Optuna's pruners (:mod:`.pruning`). The
        images are in a fixed seeded order: the val split is often sorted by class, and a
        quarter of it would then hold a class or two."""
        if self._parts is None:
            self._parts = growing_parts(self.batches, self.n_stages, self.batches[0][0].shape[0])
        self.model.set_subnet(subnet)
        correct = seen = 0
        for step, part in enumerate(self._parts, 1):
            result = evaluate(self.model, part, self.device, self.num_classes, self.amp)
            correct += int(result["confusion"].diag().sum())
            seen += result["n"]
            self.last_cost = {"val_images_seen": seen}
            yield step, correct / max(seen, 1)


def growing_parts(batches: list[tuple[torch.Tensor, torch.Tensor]], n_parts: int, batch_size: int,
                  seed: int = 0) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """The images of ``batches`` in a seeded random order, cut into ``n_parts`` near-equal parts,
    each re-batched: the first k parts together are the fidelity-k subset."""
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed)).to(y.device)
    x, y = x[order], y[order]
    bounds = [round(len(y) * k / n_parts) for k in range(n_parts + 1)]
    return [[(x[i:min(i + batch_size, hi)], y[i:min(i + batch_size, hi)]) for i in range(lo, hi, batch_size)]
            for lo, hi in zip(bounds, bounds[1:])]


class StandaloneFitness:
    """``fitness(subnet) -> val accuracy`` after training the subnet alone, from the pretrained
    backbone with fresh PEFT weights, for ``epochs`` on the **train** split (the ``retrain``
    recipe cut to ``epochs``: :func:`.rerank.standalone_epochs`, the code re-ranking uses). Needs
    no supernet. ``staged`` yields the val accuracy after each epoch, for Hyperband /
    successive halving (:mod:`.pruning`). The test split is never built."""

    def __init__(self, run: RunConfig | RunContext, out: str | Path | None, epochs: int, progress: bool = False):
        ctx = RunContext.of(run, out)
        self.run, self.out, self.n_stages, self.progress = ctx, ctx.out, int(epochs), progress
        self.last_cost: dict = {}

    def staged(self, subnet: Subnet) -> Iterator[tuple[int, float]]:
        from .rerank import standalone_epochs

        cost = self.last_cost = {"train_images": 0, "val_images_seen": 0}
        yield from standalone_epochs(self.run, self.out, subnet, self.n_stages, self.progress, cost=cost)

    def __call__(self, subnet: Subnet) -> float:
        accuracy = float("nan")
        for _, accuracy in self.staged(subnet):
            pass
        return accuracy
