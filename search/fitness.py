"""The search's fitness: validation accuracy of a subnet with the weights it inherits from the
trained supernet. Never the test split.

The validation images are decoded and transformed once (the same pipeline, from the same timm
data config, as in supernet training) and kept as tensors, so a trial costs only its forward
passes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from unitune.config import RunConfig
from unitune.data import build_dataset, build_loader, build_transform, resolve_data_config
from unitune.errors import UniTuneError
from unitune.pretrain import pretrained_weights
from unitune.supernet import PeftViT, SearchSpace, Subnet
from unitune.supernet.store import check_compatible, read_supernet
from unitune.supernet.train import SUPERNET_FILE, build_model
from unitune.train import evaluate, pick_device


def load_trained_supernet(run: RunConfig, out: str | Path, supernet_file: str | Path | None = None,
                          device: torch.device | None = None) -> tuple[PeftViT, dict]:
    """The supernet of ``run`` with its trained weights, and the file's metadata."""
    path = Path(supernet_file) if supernet_file else Path(out) / SUPERNET_FILE
    tensors, meta = read_supernet(path)
    check_compatible(meta, path, run.model.backbone, SearchSpace.from_dict(run.space).to_dict())
    device = device or pick_device(run.device)
    model = build_model(run, meta["num_classes"], device, pretrained_weights(run, out))
    model.load_trainable_state_dict({k: v.to(device) for k, v in tensors.items()}, source=str(path))
    return model.eval(), {**meta, "path": str(path)}


class SupernetFitness:
    """``fitness(subnet) -> val accuracy`` with inherited weights; call it as Optuna trials run."""

    def __init__(self, run: RunConfig, out: str | Path, supernet_file: str | Path | None = None):
        self.device = pick_device(run.device)
        self.model, self.meta = load_trained_supernet(run, out, supernet_file, self.device)
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

    @property
    def num_images(self) -> int:
        return sum(len(y) for _, y in self.batches)

    def __call__(self, subnet: Subnet) -> float:
        self.model.set_subnet(subnet)
        return evaluate(self.model, self.batches, self.device, self.num_classes, self.amp)["accuracy"]
