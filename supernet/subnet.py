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

A method left out of ``subnet`` is off in every block. The keys are the registered methods
(:mod:`unitune.supernet.methods`): a block method has a list with one size per block (or one
size, ``lora: 4``, meaning that size in every block, as the API's ``subnet={"lora": 4}``), a
model-level method (``ssf_global``) one size.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Iterator

from unitune.errors import UniTuneError
from unitune.io import read_yaml, write_yaml_atomic

from .methods import METHODS as REGISTRY
from .methods import get_method
from .space import SearchSpace

FILE_KEYS = ("backbone", "subnet", "meta")
# What positional arguments of ``Subnet(...)`` mean: the original five methods in their original
# order, for old call sites. This tuple never grows; a method registered later is a keyword.
POSITIONAL = ("lora", "adapter", "vpt", "ssf", "ssf_global")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_size(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UniTuneError(f"{where}: expected a non-negative integer, got {value!r}")
    if value < 0:
        raise UniTuneError(f"{where}: expected a non-negative integer, got {value}")
    return value


class Subnet(Mapping):
    """Method name -> sizes: a tuple with one size per block for a block method, an int for a
    model-level one. Every registered method is a key (off ones are all zero); sizes are also
    attributes (``subnet.lora``, ``subnet.ssf_global``)."""

    def __init__(self, *positional: Any, backbone: str | None = None, **sizes: Any):
        if len(positional) > len(POSITIONAL) + 1:
            raise TypeError(f"Subnet takes at most {len(POSITIONAL) + 1} positional arguments")
        if len(positional) == len(POSITIONAL) + 1:  # the old dataclass's sixth field
            *positional, backbone = positional
        for name, value in zip(POSITIONAL, positional):
            if name in sizes:
                raise TypeError(f"Subnet got {name!r} both by position and by keyword")
            sizes[name] = value
        for name in sizes:
            if name not in REGISTRY:
                raise UniTuneError(f"subnet: unknown method {name!r}, expected one of {list(REGISTRY)}")
        blocks = {m: v for m, v in sizes.items() if REGISTRY[m].site == "block"}
        for m, v in blocks.items():
            if not isinstance(v, (list, tuple)):
                raise UniTuneError(f"subnet.{m} must be a list with one size per block, got {v!r}")
        if not blocks:
            raise UniTuneError(f"subnet: names no per-block method; expected some of "
                               f"{[m.name for m in REGISTRY.values() if m.site == 'block']}")
        lengths = {m: len(v) for m, v in blocks.items()}
        if len(set(lengths.values())) != 1:
            raise UniTuneError(f"subnet: methods list different numbers of blocks: {lengths}")
        depth = next(iter(lengths.values()))
        out: dict[str, tuple[int, ...] | int] = {}
        for name, method in REGISTRY.items():
            if method.site == "block":
                value = tuple(_check_size(s, f"subnet.{name}[{i}]") for i, s in enumerate(blocks.get(name, (0,) * depth)))
                if method.on_off and not set(value) <= {0, 1}:
                    raise UniTuneError(f"subnet.{name}: {method.label} is off (0) or on (1) per block, got {list(value)}")
            else:
                value = _check_size(sizes.get(name, 0), f"subnet.{name}")
                if method.on_off and value not in (0, 1):
                    raise UniTuneError(f"subnet.{name}: expected 0 or 1, got {value}")
            out[name] = value
        object.__setattr__(self, "_sizes", out)
        object.__setattr__(self, "depth", depth)
        object.__setattr__(self, "backbone", backbone)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Subnet is immutable (cannot set {name!r}); use .replace()")

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("_") and name in REGISTRY:
            return self.sizes(name)
        raise AttributeError(f"Subnet has no method {name!r}")

    def __reduce__(self):
        return _rebuild_subnet, (dict(self._sizes), self.backbone)

    # ---- the mapping ---------------------------------------------------------------------------

    def __getitem__(self, method: str) -> tuple[int, ...] | int:
        return self.sizes(method)

    def __iter__(self) -> Iterator[str]:
        return iter(REGISTRY)

    def __len__(self) -> int:
        return len(REGISTRY)

    def __eq__(self, other: object) -> bool:  # the backbone name is not part of the subnet
        if not isinstance(other, Subnet):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> tuple:
        return tuple((m, self.sizes(m)) for m in REGISTRY)

    def __repr__(self) -> str:
        parts = [f"{m}={self.sizes(m)}" for m in REGISTRY]
        if self.backbone:
            parts.append(f"backbone={self.backbone!r}")
        return f"Subnet({', '.join(parts)})"

    def sizes(self, method: str) -> tuple[int, ...] | int:
        """Per-block sizes of a block method, the one size of a model-level method."""
        if method in self._sizes:
            return self._sizes[method]
        m = get_method(method)  # registered after this subnet was made: off
        return (0,) * self.depth if m.site == "block" else 0

    def block_size(self, method: str, block: int | None) -> int:
        """The size at one position: ``block`` for a block method, ``None`` for a model-level one."""
        return self.sizes(method) if block is None else self.sizes(method)[block]

    def replace(self, *, backbone: str | None = ..., **sizes: Any) -> "Subnet":  # type: ignore[assignment]
        """A copy with some sizes (or the backbone) changed."""
        return Subnet(**{**self._sizes, **sizes}, backbone=self.backbone if backbone is ... else backbone)

    def is_on(self, method: str) -> bool:
        sizes = self.sizes(method)
        return bool(any(sizes) if isinstance(sizes, tuple) else sizes)

    def shown_methods(self, space: SearchSpace | None = None) -> tuple[str, ...]:
        """The methods tables and counts list for this subnet, in registry order: the original
        ones always, a later one when ``space`` holds it or the subnet turns it on."""
        return tuple(m for m, method in REGISTRY.items()
                     if method.always_written or (space is not None and space.holds(m)) or self.is_on(m))

    def is_empty(self) -> bool:
        return not any(self.is_on(m) for m in REGISTRY)

    def describe(self) -> str:
        """One line: each method switched on with its size (``lora 4; vpt 1/5/5/10``: per block
        where they differ; a model-level method by its name), or ``head only``."""
        parts = []
        for m in self.shown_methods():
            sizes = self.sizes(m)
            if not isinstance(sizes, tuple):  # a model-level method
                if sizes:
                    parts.append(m)
            elif any(sizes):
                parts.append(f"{m} {sizes[0]}" if len(set(sizes)) == 1 else f"{m} {'/'.join(map(str, sizes))}")
        return "; ".join(parts) or "head only"

    # ---- construction --------------------------------------------------------------------------

    @classmethod
    def uniform(cls, depth: int, **sizes: int) -> "Subnet":
        """The same sizes in every block, by method name: ``Subnet.uniform(12, lora=8, ssf_global=1)``."""
        for name in sizes:
            get_method(name)
        return cls(**{name: (sizes.get(name, 0),) * depth if m.site == "block" else sizes.get(name, 0)
                      for name, m in REGISTRY.items()})

    @classmethod
    def coerce(cls, value: Any, depth: int, where: str) -> "Subnet":
        """What the API's ``subnet=`` arguments take: a :class:`Subnet`, a subnet file's path, its
        dict (``{"subnet": {...}}``) or a dict of method -> one size for every block or a list per
        block (``{"lora": 8}``, ``{"lora": [8, 8, 0, 0]}``)."""
        if isinstance(value, Subnet):
            return value
        if isinstance(value, (str, os.PathLike)):
            return cls.load(value, depth=depth)
        if not isinstance(value, Mapping):
            raise UniTuneError(f"{where}: subnet must be a Subnet, a subnet file or a dict like {{'lora': 8}}, "
                               f"got {type(value).__name__}")
        def lists(body: Any) -> Any:  # a tuple per block, as Subnet itself holds them, is a list here
            return {k: list(v) if isinstance(v, tuple) else v for k, v in body.items()} \
                if isinstance(body, Mapping) else body

        if "subnet" in value:  # the subnet file's own layout
            return cls.from_dict({**value, "subnet": lists(value["subnet"])}, source=f"{where}: subnet", depth=depth)
        return cls.from_dict({"subnet": lists(value)}, source=where, depth=depth)

    @classmethod
    def largest(cls, space: SearchSpace, depth: int) -> "Subnet":
        return cls.uniform(depth, **{m: space.max_size(m) for m in REGISTRY})

    @classmethod
    def smallest(cls, space: SearchSpace, depth: int) -> "Subnet":
        return cls.uniform(depth, **{m: space.min_size(m) for m in REGISTRY})

    def check(self, depth: int, space: SearchSpace | None = None, source: str = "subnet") -> "Subnet":
        """Raise a one-line error unless the subnet fits a backbone of ``depth`` blocks (and ``space``)."""
        if self.depth != depth:
            raise UniTuneError(f"{source}: lists have {self.depth} entries, but the backbone has {depth} blocks")
        if space is not None:
            for name, m in REGISTRY.items():
                allowed = space.choices(name)
                if m.site == "block":
                    for i, s in enumerate(self.sizes(name)):
                        if s not in allowed:
                            raise UniTuneError(f"{source}: {name}[{i}] = {s} is not in the search space {list(allowed)}")
                elif self.sizes(name) not in allowed:
                    raise UniTuneError(
                        f"{source}: {name} = {self.sizes(name)} is not in the search space {list(allowed)}"
                    )
        return self

    # ---- file format -------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Any, source: str = "subnet",
                  depth: int | Callable[[str | None], int] | None = None) -> "Subnet":
        """The file format. A block method may give one size instead of a list: that size in
        every block (as ``get_peft_model(subnet={"lora": 4})``). The block count is then the
        length of the file's lists, or ``depth`` when it gives none: an int, or a function of the
        file's backbone name (so the backbone is built only when a file needs it)."""
        if not isinstance(data, Mapping):
            raise UniTuneError(f"{source}: expected a mapping with a 'subnet' key, got {type(data).__name__}")
        for key in data:
            if key not in FILE_KEYS:
                raise UniTuneError(f"{source}: unknown key {key!r}, expected one of {list(FILE_KEYS)}")
        meta = data.get("meta")
        if meta is not None and not isinstance(meta, Mapping):
            raise UniTuneError(f"{source}: 'meta' must be a mapping (free-form figures), got {type(meta).__name__}")
        body = data.get("subnet")
        if not isinstance(body, Mapping):
            raise UniTuneError(f"{source}: 'subnet' must be a mapping of method -> per-block sizes")
        for key in body:
            if key not in REGISTRY:
                raise UniTuneError(f"{source}: unknown method {key!r} under 'subnet', expected one of {list(REGISTRY)}")
        block = [m for m in REGISTRY.values() if m.site == "block"]
        lists = {m.name: body[m.name] for m in block if m.name in body}
        if not lists:
            raise UniTuneError(f"{source}: 'subnet' names no method; expected some of {[m.name for m in block]}")
        for m, sizes in lists.items():
            if not isinstance(sizes, list) and not _is_int(sizes):
                raise UniTuneError(f"{source}: subnet.{m} must be a list with one size per block, or one size "
                                   f"for every block, got {sizes!r}")
        counts = {m: len(v) for m, v in lists.items() if isinstance(v, list)}
        if len(set(counts.values())) > 1:
            raise UniTuneError(f"{source}: methods list different numbers of blocks: {counts}")
        backbone = data.get("backbone")
        if backbone is not None and not isinstance(backbone, str):
            raise UniTuneError(f"{source}: 'backbone' must be a timm model name, got {backbone!r}")
        body = dict(body)
        uniform = [m for m, v in lists.items() if not isinstance(v, list)]
        if uniform:
            blocks = next(iter(counts.values()), None)
            if blocks is None:
                blocks = depth(backbone) if callable(depth) else depth
            if blocks is None:
                raise UniTuneError(f"{source}: subnet.{uniform[0]}: one size for every block needs the block count; "
                                   f"give the backbone (--backbone or a config) or a list per block")
            body.update({m: [lists[m]] * blocks for m in uniform})
        try:
            return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in body.items()}, backbone=backbone)
        except UniTuneError as e:
            raise UniTuneError(f"{source}: {e}") from None

    def to_dict(self, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The file format: every original method (the format has always listed them), and any
        later-registered method that is on."""
        out: dict[str, Any] = {}
        if self.backbone:
            out["backbone"] = self.backbone
        body: dict[str, Any] = {}
        for name in self.shown_methods():
            value = self.sizes(name)
            body[name] = list(value) if isinstance(value, tuple) else value
        out["subnet"] = body
        if meta:
            out["meta"] = dict(meta)
        return out

    @classmethod
    def load(cls, path: str | os.PathLike, depth: int | Callable[[str | None], int] | None = None) -> "Subnet":
        return cls.from_dict(read_yaml(path), source=str(path), depth=depth)

    def save(self, path: str | os.PathLike, meta: Mapping[str, Any] | None = None) -> Path:
        write_yaml_atomic(path, self.to_dict(meta))
        return Path(path)


def _rebuild_subnet(sizes: dict[str, Any], backbone: str | None) -> Subnet:
    return Subnet(**sizes, backbone=backbone)
