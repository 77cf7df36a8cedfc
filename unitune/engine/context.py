"""One run's context: what every stage of a command reads, built once and passed along.

A command (``unitune run``, a stage command, ``unitune compare`` per task) builds one
:class:`RunContext` from the checked :class:`~unitune.engine.config.RunConfig` and its run folder and
hands it to each stage function. The context builds lazily and keeps:

- ``space``: the :class:`~unitune.supernet.SearchSpace` of ``run.space`` (built once);
- ``shapes`` / ``dims`` / ``frozen``: the backbone on the meta device (shapes only, no weight
  read), its :class:`~unitune.supernet.BackboneDims` and its frozen parameter count (every
  parameter but the classifier head: what a percentage budget refers to), computed one way;
- ``device``: the torch device ``run.device`` names;
- ``budget(value, where)``: a budget parsed once per value;
- ``once(key, build)``: anything a stage prepares once per command (the search's checked
  settings, its seeds and sampler check: :func:`unitune.search.stage.check_search_stage`);
- ``layout``: the :class:`RunLayout`, every file and folder name of a run folder in one place.

Stage functions still accept ``(run, out)`` (the CLI's and the tests' form): :meth:`RunContext.of`
turns that into a context, or returns the one it is given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from unitune.curves import CURVES_FILE
from unitune.stagelog import TENSORBOARD_DIR

from .backbone import create_backbone
from .config import CONFIG_ECHO, RunConfig
from .train import STATE_FILE, pick_device  # STATE_FILE: a checkpoint folder's resume state

# ---- the names of a run folder ------------------------------------------------------------------

SUMMARY_FILE = "run_summary.json"
PRETRAIN_DIR = "pretrain"
PRETRAIN_WEIGHTS = "backbone.safetensors"  # inside PRETRAIN_DIR
PRETRAIN_LOG = "log.jsonl"  # inside PRETRAIN_DIR
SUPERNET_FILE = "supernet.safetensors"
SUPERNET_CKPT = "supernet_ckpt"
SUPERNET_LOG = "supernet_log.jsonl"
STUDY_DB = "study.db"
BEST_SUBNET = "best_subnet.yaml"
PLOTS_DIR = "plots"
RERANK_PLOT = "rerank_tau.png"  # inside PLOTS_DIR
TRIALS_CSV = "trials.csv"
TRIALS_MD = "trials.md"
RETRAIN_CKPT = "retrain_ckpt"
RETRAIN_LOG = "retrain_log.jsonl"
RETRAIN_RESULT = "retrain_result.json"
EXPORT_DIR = "export"
EXPORT_MANIFEST = "unitune.json"  # inside EXPORT_DIR: the manifest unitune.retrain.export writes and reads


@dataclass(frozen=True)
class RunLayout:
    """Every file and folder of a run folder ``root``, named once."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config_echo(self) -> Path:
        return self.root / CONFIG_ECHO

    @property
    def summary(self) -> Path:
        return self.root / SUMMARY_FILE

    @property
    def pretrain_dir(self) -> Path:
        return self.root / PRETRAIN_DIR

    @property
    def pretrain_weights(self) -> Path:
        return self.root / PRETRAIN_DIR / PRETRAIN_WEIGHTS

    @property
    def pretrain_log(self) -> Path:
        return self.root / PRETRAIN_DIR / PRETRAIN_LOG

    @property
    def supernet(self) -> Path:
        return self.root / SUPERNET_FILE

    @property
    def supernet_ckpt(self) -> Path:
        return self.root / SUPERNET_CKPT

    @property
    def supernet_state(self) -> Path:
        return self.root / SUPERNET_CKPT / STATE_FILE

    @property
    def supernet_log(self) -> Path:
        return self.root / SUPERNET_LOG

    @property
    def study_db(self) -> Path:
        return self.root / STUDY_DB

    @property
    def best_subnet(self) -> Path:
        return self.root / BEST_SUBNET

    @property
    def plots(self) -> Path:
        return self.root / PLOTS_DIR

    @property
    def rerank_plot(self) -> Path:
        return self.root / PLOTS_DIR / RERANK_PLOT

    @property
    def trials_csv(self) -> Path:
        return self.root / TRIALS_CSV

    @property
    def curves(self) -> Path:
        return self.root / CURVES_FILE

    @property
    def tensorboard(self) -> Path:
        return self.root / TENSORBOARD_DIR

    @property
    def retrain_ckpt(self) -> Path:
        return self.root / RETRAIN_CKPT

    @property
    def retrain_state(self) -> Path:
        return self.root / RETRAIN_CKPT / STATE_FILE

    @property
    def retrain_log(self) -> Path:
        return self.root / RETRAIN_LOG

    @property
    def retrain_result(self) -> Path:
        return self.root / RETRAIN_RESULT

    @property
    def export(self) -> Path:
        return self.root / EXPORT_DIR

    @property
    def export_manifest(self) -> Path:
        return self.root / EXPORT_DIR / EXPORT_MANIFEST


def frozen_params(vit: torch.nn.Module) -> int:
    """The backbone's parameters without its classifier heads (a distilled DeiT has two): what the
    PEFT stages freeze, and what a budget given in per cent is a share of."""
    from unitune.supernet.methods.vit import classifier_heads

    head = {id(p) for h in classifier_heads(vit).values() for p in h.parameters()}
    return sum(p.numel() for p in vit.parameters() if id(p) not in head)


class RunContext:
    """A checked run config, its run folder and what the stages derive from them, each built once."""

    def __init__(self, run: RunConfig, out: str | os.PathLike):
        self.run = run
        self.layout = RunLayout(Path(out))
        # What the config alone decides (space, shapes, dims, frozen count, device; budgets; dims
        # by head size): one store that every context moved from this one shares.
        self._built: dict[str, Any] = {}
        self._budgets: dict[Any, int] = {}
        self._dims: dict[int, Any] = {}
        self._once: dict[Any, Any] = {}

    @classmethod
    def of(cls, run: "RunConfig | RunContext", out: str | os.PathLike | None = None) -> "RunContext":
        """``run`` itself when it is a context (for the folder ``out``, if given), else a new one."""
        if isinstance(run, RunContext):
            return run if out is None or Path(out) == run.out else run.moved(out)
        if out is None:
            raise TypeError("RunContext.of: a RunConfig needs its run folder")
        return cls(run, out)

    def moved(self, out: str | os.PathLike, run: RunConfig | None = None) -> "RunContext":
        """This context for another run folder (and for ``run``, where given): what the config
        alone decides (space, shapes, dims, frozen count, device, budgets) is shared, built by
        either context, before or after the move; what depends on the folder (the search's checked settings: its default
        storage) is not. ``run`` may differ from this context's config only in what none of the
        shared values reads (the data, the stages' recipes and seeds: compare's tasks and seeds);
        another model, space or device is refused."""
        if run is not None and (run.model, run.space, run.device) != (self.run.model, self.run.space, self.run.device):
            raise ValueError(f"RunContext.moved: {run.source} has another model, space or device than "
                             f"{self.run.source}; build a RunContext of its own")
        other = RunContext(self.run if run is None else run, out)
        other._built = self._built
        other._budgets = self._budgets
        other._dims = self._dims
        return other

    @property
    def out(self) -> Path:
        return self.layout.root

    @property
    def source(self) -> str:
        return self.run.source

    def _shared(self, name: str, build: Callable[[], Any]) -> Any:
        if name not in self._built:
            self._built[name] = build()
        return self._built[name]

    @property
    def space(self):
        return self._shared("space", self._space)

    def _space(self):
        from unitune.supernet.space import SearchSpace

        if self.run.search_space is not None:  # built when the config was checked
            return self.run.search_space
        return SearchSpace.from_dict(self.run.space, source=f"{self.run.source}: space")

    @property
    def shapes(self) -> torch.nn.Module:
        """The backbone on the meta device (its head's size is immaterial: ``frozen`` excludes it)."""
        m = self.run.model
        return self._shared("shapes", lambda: create_backbone(m.backbone, 2, kwargs=m.kwargs, meta=True))

    @property
    def dims(self):
        from unitune.supernet.methods.dims import BackboneDims

        return self._shared("dims", lambda: BackboneDims.from_model(self.shapes))

    def dims_for(self, num_classes: int):
        """``dims`` with a head of ``num_classes`` (the data decides it; counts with the head read it)."""
        if num_classes == self.dims.num_classes:
            return self.dims
        if num_classes not in self._dims:
            self._dims[num_classes] = self._dims_for(num_classes)
        return self._dims[num_classes]

    def _dims_for(self, num_classes: int):
        import copy

        from unitune.supernet.methods.dims import BackboneDims

        with torch.device("meta"):  # the head alone is made anew, on the meta device
            shapes = copy.deepcopy(self.shapes)
            shapes.reset_classifier(num_classes)
        return BackboneDims.from_model(shapes)

    @property
    def depth(self) -> int:
        return self.dims.depth

    @property
    def frozen(self) -> int:
        """The backbone's parameters, head excluded: what the PEFT stages freeze."""
        return self._shared("frozen", lambda: frozen_params(self.shapes))

    @property
    def device(self) -> torch.device:
        return self._shared("device", lambda: pick_device(self.run.device))

    def budget(self, value: str | int, where: str = "budget") -> int:
        """``value`` (``0.4M``, ``0.5%``, 400000) as a parameter count, parsed once per value;
        ``where`` names it in the error of a first, failing parse."""
        key = (type(value).__name__, value)
        if key not in self._budgets:
            from unitune.supernet.budget import parse_budget

            self._budgets[key] = parse_budget(value, self.frozen, source=where)
        return self._budgets[key]

    def cached(self, key: Any) -> Any:
        """What :meth:`once` built for ``key``, or None."""
        return self._once.get(key)

    def once(self, key: Any, build: Callable[[], Any]) -> Any:
        """``build()`` the first time ``key`` is asked for; its value after that."""
        if key not in self._once:
            self._once[key] = build()
        return self._once[key]
