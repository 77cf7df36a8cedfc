"""Run configuration: YAML files with one section per stage, validated up front.

A config file looks like ``configs/demo.yaml``; ``key=value`` overrides on the command line use
dotted paths (``supernet.epochs=3``). Every unknown key, wrong type or out-of-range value is a
:class:`UniTuneError` that names the file and the dotted path, before any expensive work starts.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from .errors import UniTuneError
from .io import read_yaml


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is not None:
        return origin.__name__
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, where)
            except UniTuneError:
                continue
        raise UniTuneError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is typing.Literal:
        if value in typing.get_args(tp):
            return value
        raise UniTuneError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if tp is Any:
        return value
    if tp is type(None):
        if value is None:
            return None
        raise UniTuneError(f"{where}: expected null, got {value!r}")
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UniTuneError(f"{where}: expected a list, got {value!r}")
        (arg, *_) = typing.get_args(tp) or (Any,)
        return tuple(_coerce(v, arg, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise UniTuneError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is str:
        if isinstance(value, str):
            return value
    elif dataclasses.is_dataclass(tp):
        return from_mapping(tp, value, where)
    else:
        raise TypeError(f"unsupported config type {tp!r} at {where}")
    raise UniTuneError(f"{where}: expected {_type_name(tp)}, got {value!r}")


def from_mapping(cls: type, data: Any, where: str):
    """Build the dataclass ``cls`` from a mapping, naming ``where.key`` in every error."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise UniTuneError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    for key in data:
        if key not in names:
            raise UniTuneError(f"{where}.{key}: unknown key, expected one of {sorted(names)}")
    values = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    obj = cls(**values)
    check = getattr(obj, "validate", None)
    if check is not None:
        check(where)
    return obj


def _positive(where: str, **values: float) -> None:
    for key, value in values.items():
        if value is not None and value <= 0:
            raise UniTuneError(f"{where}.{key}: expected a positive number, got {value}")


@dataclass(frozen=True)
class ModelConfig:
    """The timm backbone. ``weights`` is a local file (safetensors / .npz / .pth) loaded through
    timm's ``pretrained_cfg_overlay`` so the head is replaced and the position embedding resized;
    ``pretrained: true`` without ``weights`` downloads from the hub."""

    backbone: str = "vit_base_patch16_224.orig_in21k"
    pretrained: bool = False
    weights: str | None = None
    kwargs: dict = field(default_factory=dict)  # timm.create_model overrides (img_size, depth, ...)


@dataclass(frozen=True)
class TrainConfig:
    """An optimisation recipe (supernet or retrain stage)."""

    epochs: int = 10
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 0
    min_lr: float = 1e-6
    label_smoothing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    grad_clip: float | None = None
    amp: bool = True  # mixed precision, on CUDA only
    seed: int = 0
    log_every: int = 0  # steps between progress-bar postfix updates; 0 = every step

    def validate(self, where: str) -> None:
        _positive(where, epochs=self.epochs, lr=self.lr)
        if self.warmup_epochs < 0 or self.warmup_epochs > self.epochs:
            raise UniTuneError(f"{where}.warmup_epochs: expected 0..epochs ({self.epochs}), got {self.warmup_epochs}")
        if not 0 <= self.label_smoothing < 1:
            raise UniTuneError(f"{where}.label_smoothing: expected a value in [0, 1), got {self.label_smoothing}")


def load_config_dict(path: str | os.PathLike, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Read a YAML config and apply ``key.path=value`` overrides (values parsed as YAML)."""
    data = read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UniTuneError(f"{path}: expected a mapping of sections at the top level")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UniTuneError(f"override {item!r}: expected key.path=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UniTuneError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def config_source(path: str | os.PathLike) -> str:
    return str(Path(path))
