"""The subnet: one size per method per transformer block, the object the model is set to.

The file format is what ``unitune search`` writes, ``unitune retrain`` reads and people edit::

    backbone: vit_base_patch16_224      # optional; the run config may give it
    subnet:                             # one entry per transformer block
      lora:    [8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8]
      adapter: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
      vpt:     [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
      ssf:     [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
      ssf_global: 0                     # optional: SSF after patch-embed and the final norm
    meta: {}                            # optional, free-form (search writes its figures here)

A method left out of ``subnet`` is off in every block.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from unitune.errors import UniTuneError
from unitune.io import read_yaml, write_yaml_atomic

from .space import METHODS, SearchSpace

FILE_KEYS = ("backbone", "subnet", "meta")


def _check_size(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UniTuneError(f"{where}: expected a non-negative integer, got {value!r}")
    if value < 0:
        raise UniTuneError(f"{where}: expected a non-negative integer, got {value}")
    return value


@dataclass(frozen=True)
class Subnet:
    lora: tuple[int, ...]
    adapter: tuple[int, ...]
    vpt: tuple[int, ...]
    ssf: tuple[int, ...]
    ssf_global: int = 0
    backbone: str | None = field(default=None, compare=False)

    def __post_init__(self):
        lengths = {m: len(getattr(self, m)) for m in METHODS}
        if len(set(lengths.values())) != 1:
            raise UniTuneError(f"subnet: methods list different numbers of blocks: {lengths}")
        for m in METHODS:
            object.__setattr__(self, m, tuple(_check_size(s, f"subnet.{m}[{i}]") for i, s in enumerate(getattr(self, m))))
            if m == "ssf" and not set(getattr(self, m)) <= {0, 1}:
                raise UniTuneError(f"subnet.ssf: SSF is off (0) or on (1) per block, got {list(self.ssf)}")
        _check_size(self.ssf_global, "subnet.ssf_global")
        if self.ssf_global not in (0, 1):
            raise UniTuneError(f"subnet.ssf_global: expected 0 or 1, got {self.ssf_global}")

    @property
    def depth(self) -> int:
        return len(self.lora)

    @classmethod
    def uniform(cls, depth: int, lora: int = 0, adapter: int = 0, vpt: int = 0, ssf: int = 0, ssf_global: int = 0) -> "Subnet":
        """The same sizes in every block."""
        return cls((lora,) * depth, (adapter,) * depth, (vpt,) * depth, (ssf,) * depth, ssf_global)

    @classmethod
    def largest(cls, space: SearchSpace, depth: int) -> "Subnet":
        return cls.uniform(depth, **{k: space.max_size(k) for k in (*METHODS, "ssf_global")})

    @classmethod
    def smallest(cls, space: SearchSpace, depth: int) -> "Subnet":
        return cls.uniform(depth, **{k: space.min_size(k) for k in (*METHODS, "ssf_global")})

    def sizes(self, method: str) -> tuple[int, ...]:
        return getattr(self, method)

    def is_empty(self) -> bool:
        return not self.ssf_global and not any(any(self.sizes(m)) for m in METHODS)

    def check(self, depth: int, space: SearchSpace | None = None, source: str = "subnet") -> "Subnet":
        """Raise a one-line error unless the subnet fits a backbone of ``depth`` blocks (and ``space``)."""
        if self.depth != depth:
            raise UniTuneError(f"{source}: lists have {self.depth} entries, but the backbone has {depth} blocks")
        if space is not None:
            for m in METHODS:
                for i, s in enumerate(self.sizes(m)):
                    if s not in space.choices(m):
                        raise UniTuneError(
                            f"{source}: {m}[{i}] = {s} is not in the search space {list(space.choices(m))}"
                        )
            if self.ssf_global not in space.ssf_global:
                raise UniTuneError(
                    f"{source}: ssf_global = {self.ssf_global} is not in the search space {list(space.ssf_global)}"
                )
        return self

    # ---- file format -------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Any, source: str = "subnet") -> "Subnet":
        if not isinstance(data, Mapping):
            raise UniTuneError(f"{source}: expected a mapping with a 'subnet' key, got {type(data).__name__}")
        for key in data:
            if key not in FILE_KEYS:
                raise UniTuneError(f"{source}: unknown key {key!r}, expected one of {list(FILE_KEYS)}")
        body = data.get("subnet")
        if not isinstance(body, Mapping):
            raise UniTuneError(f"{source}: 'subnet' must be a mapping of method -> per-block sizes")
        for key in body:
            if key not in (*METHODS, "ssf_global"):
                raise UniTuneError(
                    f"{source}: unknown method {key!r} under 'subnet', expected one of {[*METHODS, 'ssf_global']}"
                )
        lists = {m: body[m] for m in METHODS if m in body}
        if not lists:
            raise UniTuneError(f"{source}: 'subnet' names no method; expected some of {list(METHODS)}")
        for m, sizes in lists.items():
            if not isinstance(sizes, list):
                raise UniTuneError(f"{source}: subnet.{m} must be a list with one size per block, got {sizes!r}")
        depth = {len(v) for v in lists.values()}
        if len(depth) != 1:
            raise UniTuneError(
                f"{source}: methods list different numbers of blocks: {({m: len(v) for m, v in lists.items()})}"
            )
        (n,) = depth
        backbone = data.get("backbone")
        if backbone is not None and not isinstance(backbone, str):
            raise UniTuneError(f"{source}: 'backbone' must be a timm model name, got {backbone!r}")
        try:
            return cls(
                **{m: tuple(lists.get(m, [0] * n)) for m in METHODS},
                ssf_global=body.get("ssf_global", 0),
                backbone=backbone,
            )
        except UniTuneError as e:
            raise UniTuneError(f"{source}: {e}") from None

    def to_dict(self, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.backbone:
            out["backbone"] = self.backbone
        out["subnet"] = {m: list(self.sizes(m)) for m in METHODS}
        out["subnet"]["ssf_global"] = self.ssf_global
        if meta:
            out["meta"] = dict(meta)
        return out

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Subnet":
        return cls.from_dict(read_yaml(path), source=str(path))

    def save(self, path: str | os.PathLike, meta: Mapping[str, Any] | None = None) -> Path:
        write_yaml_atomic(path, self.to_dict(meta))
        return Path(path)
