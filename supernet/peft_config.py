"""Per-method config objects, HF PEFT's habit: ``LoraConfig(r=8, targets=["qkv", "fc1"])``.

Each registered method has a config class: the built-in ones are written out below with the
names PEFT users know (``r``, ``alpha``, ``targets``, ``dim``, ``tokens``); a method registered
later without one gets a generated class (:func:`config_class`), so no registered method lacks a
config (``tests/test_api_config.py`` checks every one against the registry). Several configs
combine into a :class:`UnituneConfig`, which becomes the fixed subnet ``get_peft_model`` builds
and the space that shapes its layers (methods it leaves out are off).

A size is one int (every block) or a list with one int per block; ``blocks=[0, 1]`` (PEFT's
``layers_to_transform``) puts it on those blocks only. Every value is checked when the config is
made, by the registry's own checks, as one-line :class:`UniTuneError` s naming the field.

This module also holds the rule for a bare dict given to ``get_peft_model`` as its config
(:func:`subnet_from_dict`): it is always a fixed subnet, never a space.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

from unitune.errors import UniTuneError

from .methods import METHODS, get_method, option_names
from .methods.base import MAX_SIZE, Method
from .space import SearchSpace
from .subnet import Subnet


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(kw_only=True)
class MethodConfig:
    """The base of the per-method configs: a size (field ``size_field``), the blocks it goes
    on, and the method's space options (``option_fields``: config field -> space option)."""

    method: ClassVar[str] = ""
    size_field: ClassVar[str] = "size"
    option_fields: ClassVar[dict[str, str]] = {}

    blocks: Sequence[int] | None = None  # the blocks that get the method (default: all)

    def __post_init__(self) -> None:
        m = get_method(self.method)
        where = type(self).__name__
        size = getattr(self, self.size_field)
        if isinstance(size, (list, tuple)):
            if m.site == "model":
                raise UniTuneError(f"{where}.{self.size_field}: {m.label} is one size for the whole model, "
                                   f"got {size!r}")
            if self.blocks is not None:
                raise UniTuneError(f"{where}: give {self.size_field} as a list per block or blocks=, not both")
            for s in size:
                self._check_size(s, m, f"{where}.{self.size_field}")
        else:
            self._check_size(size, m, f"{where}.{self.size_field}")
        if self.blocks is not None:
            if m.site == "model":
                raise UniTuneError(f"{where}.blocks: {m.label} is a model-level method, it has no blocks")
            if isinstance(self.blocks, (str, bytes)) or not isinstance(self.blocks, (list, tuple)) \
                    or not all(_is_int(b) and b >= 0 for b in self.blocks):
                raise UniTuneError(f"{where}.blocks: expected a list of block indices, got {self.blocks!r}")
        for fname, option in self.option_fields.items():
            _, opt = option_names()[option]
            value = getattr(self, fname)
            if value is not None:
                opt.check(value, f"{where}.{fname}")

    @staticmethod
    def _check_size(value: Any, method: Method, where: str) -> None:
        if not _is_int(value) or value < 0:
            raise UniTuneError(f"{where}: expected a non-negative integer, got {value!r}")
        if value > MAX_SIZE:
            raise UniTuneError(f"{where}: size {value} is above {MAX_SIZE} (wider than a ViT; a typo?)")
        if method.on_off and value not in (0, 1):
            raise UniTuneError(f"{where}: {method.label} is off (0) or on (1), got {value!r}")

    def sizes(self, depth: int) -> tuple[int, ...] | int:
        """The method's sizes on a backbone of ``depth`` blocks (one int for a model-level method)."""
        size = getattr(self, self.size_field)
        where = f"{type(self).__name__}.{self.size_field}"
        if get_method(self.method).site == "model":
            return size
        if isinstance(size, (list, tuple)):
            if len(size) != depth:
                raise UniTuneError(f"{where}: {len(size)} sizes, but the backbone has {depth} blocks")
            return tuple(size)
        if self.blocks is None:
            return (size,) * depth
        outside = [b for b in self.blocks if b >= depth]
        if outside:
            raise UniTuneError(f"{type(self).__name__}.blocks: block {outside[0]} is outside the backbone's "
                               f"{depth} blocks (0..{depth - 1})")
        return tuple(size if i in set(self.blocks) else 0 for i in range(depth))

    def space_options(self) -> dict[str, Any]:
        """The space options this config sets (those left at ``None`` keep the space default)."""
        return {option: getattr(self, f) for f, option in self.option_fields.items() if getattr(self, f) is not None}


@dataclass(kw_only=True)
class LoraConfig(MethodConfig):
    """LoRA of rank ``r`` on the block linears ``targets`` (``qkv``, ``proj``, ``fc1``, ``fc2``).

    unitune's update is ``s·B A`` with a fixed scale ``s`` (so a rank-r slice means the same in
    every subnet): ``scale`` sets it, or ``alpha`` as PEFT's ``lora_alpha`` (``s = alpha / r``,
    for one rank in every block); neither gives ``s = 1`` (``alpha = r``). unitune's LoRA has no
    dropout: ``dropout`` is there for PEFT's spelling and must be 0.
    """

    method: ClassVar[str] = "lora"
    size_field: ClassVar[str] = "r"
    option_fields: ClassVar[dict[str, str]] = {"targets": "lora_targets", "scale": "lora_scale"}

    r: int | Sequence[int] = 8
    alpha: float | None = None
    dropout: float = 0.0
    targets: Sequence[str] | None = None
    scale: float | None = None

    def __post_init__(self) -> None:
        where = type(self).__name__
        if self.dropout != 0:
            raise UniTuneError(f"{where}.dropout: unitune's {get_method(self.method).label} has no dropout; "
                               f"expected 0.0, got {self.dropout!r}")
        if self.alpha is not None:
            if self.scale is not None:
                raise UniTuneError(f"{where}: give alpha (s = alpha / r) or scale, not both")
            if not _is_int(self.r) or self.r == 0:
                raise UniTuneError(f"{where}.alpha: s = alpha / r needs one rank > 0, got r={self.r!r}; "
                                   f"give scale= for ranks per block")
            option_names()[self.option_fields["scale"]][1].check(self.alpha, f"{where}.alpha")
        # The fields stay as given (scale None beside alpha), so ``dataclasses.replace(c, r=4)``
        # works and s follows the new r; s = alpha / r is worked out where it is read.
        super().__post_init__()

    def space_options(self) -> dict[str, Any]:
        options = super().space_options()
        if self.alpha is not None:
            options[self.option_fields["scale"]] = self.alpha / self.r
        return options


@dataclass(kw_only=True)
class DoraConfig(LoraConfig):
    """DoRA (LoRA plus a learned magnitude) of rank ``r``: the fields of :class:`LoraConfig`."""

    method: ClassVar[str] = "dora"
    option_fields: ClassVar[dict[str, str]] = {"targets": "dora_targets", "scale": "dora_scale"}


@dataclass(kw_only=True)
class AdapterConfig(MethodConfig):
    """A bottleneck adapter of width ``dim`` on each block's MLP, ``style`` sequential or parallel."""

    method: ClassVar[str] = "adapter"
    size_field: ClassVar[str] = "dim"
    option_fields: ClassVar[dict[str, str]] = {"style": "adapter_style", "scale": "adapter_scale"}

    dim: int | Sequence[int] = 8
    style: str | None = None
    scale: float | None = None


@dataclass(kw_only=True)
class AdapterPlusConfig(MethodConfig):
    """Adapter+ of width ``dim`` after each block."""

    method: ClassVar[str] = "adapter_plus"
    size_field: ClassVar[str] = "dim"

    dim: int | Sequence[int] = 8


@dataclass(kw_only=True)
class VPTConfig(MethodConfig):
    """VPT-deep: ``tokens`` learned prompt tokens per block."""

    method: ClassVar[str] = "vpt"
    size_field: ClassVar[str] = "tokens"

    tokens: int | Sequence[int] = 10


@dataclass(kw_only=True)
class SSFConfig(MethodConfig):
    """SSF after the six ops of each block (``on``: 1, or 0/1 per block)."""

    method: ClassVar[str] = "ssf"
    size_field: ClassVar[str] = "on"

    on: int | Sequence[int] = 1


@dataclass(kw_only=True)
class SSFGlobalConfig(MethodConfig):
    """SSF after the patch embedding and the final norm (one on/off for the model)."""

    method: ClassVar[str] = "ssf_global"
    size_field: ClassVar[str] = "on"

    on: int = 1


@dataclass(kw_only=True)
class BitFitConfig(MethodConfig):
    """BitFit: a trained bias after the six ops of each block (``on``: 1, or 0/1 per block)."""

    method: ClassVar[str] = "bitfit"
    size_field: ClassVar[str] = "on"

    on: int | Sequence[int] = 1


WRITTEN: tuple[type[MethodConfig], ...] = (LoraConfig, DoraConfig, AdapterConfig, AdapterPlusConfig, VPTConfig,
                                           SSFConfig, SSFGlobalConfig, BitFitConfig)
_GENERATED: dict[str, type[MethodConfig]] = {}


def config_class(name: str) -> type[MethodConfig]:
    """The config class of the registered method ``name``: the one written above, or one made
    from the registry by :func:`generate_config_class` (once per method)."""
    method = get_method(name)
    for cls in WRITTEN:
        if cls.method == name:
            return cls
    if name not in _GENERATED:
        _GENERATED[name] = generate_config_class(method)
    return _GENERATED[name]


def generate_config_class(method: Method) -> type[MethodConfig]:
    """A config class for ``method`` made from what it declares: field ``size`` (default 1 for
    an on/off method, else 8) and one field per option, named without the method's prefix
    (``vera_scale`` -> ``scale``), default ``None`` (the space's default)."""
    prefix = f"{method.name}_"
    short = {o.name: o.name[len(prefix):] if o.name.startswith(prefix) else o.name for o in method.options}
    # An option whose short name is a base field (``size``, ``blocks``) keeps its full name.
    fields = {(s if s not in ("size", "blocks") else o): o for o, s in short.items()}
    size_type = int if method.site == "model" else int | Sequence[int]
    spec = [("size", size_type, field(default=1 if method.on_off else 8))]
    spec += [(f, Any, field(default=None)) for f in fields]
    title = "".join(part.capitalize() for part in method.name.split("_")) + "Config"
    cls = dataclasses.make_dataclass(title, spec, bases=(MethodConfig,), kw_only=True,
                                     namespace={"method": method.name, "option_fields": fields,
                                                "__doc__": f"{method.label or method.name}: made from the registry."})
    cls.__module__ = __name__
    return cls


def method_configs() -> dict[str, type[MethodConfig]]:
    """Every registered method's config class, in registration order."""
    return {name: config_class(name) for name in METHODS}


class UnituneConfig:
    """Several method configs at once (at most one per method): ``UnituneConfig(LoraConfig(r=8),
    SSFConfig())`` or ``UnituneConfig([...])``. Methods it leaves out are off."""

    def __init__(self, *configs: MethodConfig | Sequence[MethodConfig]):
        if len(configs) == 1 and isinstance(configs[0], (list, tuple)):
            configs = tuple(configs[0])
        if not configs:
            raise UniTuneError("UnituneConfig: names no method; give configs such as LoraConfig(r=8)")
        seen: dict[str, MethodConfig] = {}
        for c in configs:
            if not isinstance(c, MethodConfig):
                raise UniTuneError(f"UnituneConfig: expected method configs (LoraConfig, SSFConfig, ...), "
                                   f"got {type(c).__name__}")
            if c.method in seen:
                raise UniTuneError(f"UnituneConfig: two configs for {c.method!r}; give one per method")
            seen[c.method] = c
        self.configs: tuple[MethodConfig, ...] = tuple(configs)

    def __repr__(self) -> str:
        return f"UnituneConfig({', '.join(map(repr, self.configs))})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UnituneConfig) and list(self.configs) == list(other.configs)

    def to_subnet(self, depth: int) -> Subnet:
        """The fixed subnet on a backbone of ``depth`` blocks."""
        return Subnet(**_all_off(depth, {c.method: c.sizes(depth) for c in self.configs}))

    def to_space(self, depth: int) -> SearchSpace:
        """The space the subnet lives in: 0 and its sizes per method, the configs' options."""
        values: dict[str, Any] = {}
        subnet = self.to_subnet(depth)
        for name in METHODS:
            sizes = subnet.sizes(name)
            values[name] = sorted({0} | (set(sizes) if isinstance(sizes, tuple) else {sizes}))
        for c in self.configs:
            values.update(c.space_options())
        return SearchSpace(source="UnituneConfig", **values)


def _all_off(depth: int, sizes: dict[str, Any]) -> dict[str, Any]:
    return {name: sizes.get(name, (0,) * depth if m.site == "block" else 0) for name, m in METHODS.items()}


def as_unitune_config(config: Any) -> UnituneConfig:
    """A :class:`UnituneConfig` from one method config, a list of them, or itself."""
    if isinstance(config, UnituneConfig):
        return config
    if isinstance(config, MethodConfig):
        return UnituneConfig(config)
    return UnituneConfig(*config)


def subnet_from_dict(data: Mapping[str, Any], depth: int, where: str = "get_peft_model") -> tuple[Subnet, dict]:
    """A bare dict given as a config: always a **fixed subnet**, never a space.

    Each method key takes one size for every block (``{"lora": 8}``) or a list with one size
    per block (``{"lora": [8, 8, 0, 0]}``, exactly ``depth`` of them); a model-level method one
    int. Option keys (``lora_targets``, ``adapter_style``, ...) shape the layers. Anything else
    is a one-line error naming the key and value; a space goes through ``space=``.

    Returns the subnet and the options (a dict for the space).
    """
    if not data:
        raise UniTuneError(f"{where}: the config dict names no method; expected e.g. {{'lora': 8}}")
    options = option_names()
    sizes: dict[str, Any] = {}
    opts: dict[str, Any] = {}
    for key, value in data.items():
        if key in options:
            opts[key] = value
            continue
        if key not in METHODS:
            raise UniTuneError(f"{where}: config key {key!r}: expected a method ({', '.join(METHODS)}) "
                               f"or a method option ({', '.join(options)})")
        m = METHODS[key]
        if _is_int(value):
            sizes[key] = (value,) * depth if m.site == "block" else value
        elif m.site == "block" and isinstance(value, (list, tuple)) and len(value) == depth \
                and all(_is_int(v) for v in value):
            sizes[key] = tuple(value)
        else:
            per_block = "" if m.site == "model" else f" or one per block (a list of {depth} ints)"
            raise UniTuneError(f"{where}: config[{key!r}] = {value!r}: expected one size (an int){per_block}; "
                               f"a dict config is a fixed subnet; a search space goes through space= "
                               f"(e.g. space={{{key!r}: {[0, 1] if m.on_off else [0, 4, 8]}}})")
    if not sizes:
        raise UniTuneError(f"{where}: the config dict names no method, only options {list(opts)}; "
                           f"expected e.g. {{'lora': 8}}")
    try:
        subnet = Subnet(**_all_off(depth, sizes))
    except UniTuneError as e:
        raise UniTuneError(f"{where}: config: {e}") from None
    return subnet, opts
