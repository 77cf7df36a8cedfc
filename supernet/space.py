"""The search space: ordered size choices per method, and the options that shape the modules.

A space is read from the ``space:`` section of a YAML config::

    space:
      lora: [0, 1, 5, 10]        # LoRA rank per block
      adapter: [0, 1, 5, 10]     # Adapter bottleneck width per block
      vpt: [0, 1, 5, 10]         # VPT-deep prompt tokens per block
      ssf: [0, 1]                # SSF off / on per block
      ssf_global: [0, 1]         # SSF after patch-embed and the final norm, off / on
      lora_targets: [qkv]        # linears of each block that get LoRA: qkv, proj, fc1, fc2
      lora_scale: 1.0            # s in qkv(x) + s·B(Ax)
      adapter_style: sequential  # after the MLP (NOAH) or parallel to it (AdaptFormer)
      adapter_scale: 1.0

The keys come from the method registry (:mod:`unitune.supernet.methods`): one size list per
method and each method's options, with their defaults and checks. A method the space does not
name takes its default choices; a method registered after the original five defaults to
``[0]`` (off). The size lists are ordered, so a search can encode a choice as an index into them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Iterator

from unitune.errors import UniTuneError

from .methods import METHODS as REGISTRY
from .methods import get_method, option_names

# The block methods the default space searches (the original four): kept for old imports and
# tests. Library code iterates the registry (``unitune.supernet.methods.METHODS``).
METHODS = tuple(m.name for m in REGISTRY.values() if m.site == "block" and m.default_choices != (0,))
SIZE_KEYS = tuple(m.name for m in REGISTRY.values() if m.default_choices != (0,))


class SearchSpace(Mapping):
    """Method name -> its ordered size choices; the methods' options are attributes
    (``space.lora_targets``), as are the choices (``space.lora``)."""

    def __init__(self, source: str = "space", **values: Any):
        options = option_names()
        for key in values:
            if key not in REGISTRY and key not in options:
                known = sorted([*REGISTRY, *options])
                raise UniTuneError(f"{source}.{key}: unknown key, expected one of {known}")
        choices = {name: m.check_choices(values.get(name, m.default_choices), f"{source}.{name}")
                   for name, m in REGISTRY.items()}
        opts = {name: o.check(values.get(name, o.default), f"{source}.{name}") for name, (_, o) in options.items()}
        object.__setattr__(self, "_choices", choices)
        object.__setattr__(self, "_options", opts)
        # Where the space came from, for error messages ("configs/demo.yaml: space.lora").
        object.__setattr__(self, "source", source)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"SearchSpace is immutable (cannot set {name!r})")

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("_"):
            if name in self._choices:
                return self._choices[name]
            if name in self._options:
                return self._options[name]
            if name in REGISTRY:  # registered after this space was made: its default
                return REGISTRY[name].default_choices
            if name in option_names():
                return option_names()[name][1].default
        raise AttributeError(f"SearchSpace has no method or option {name!r}")

    def __reduce__(self):
        return _rebuild_space, ({**self._choices, **self._options}, self.source)

    # ---- the mapping: method -> choices -----------------------------------------------------

    def __getitem__(self, method: str) -> tuple[int, ...]:
        return self.choices(method)

    def __iter__(self) -> Iterator[str]:
        return iter(REGISTRY)

    def __len__(self) -> int:
        return len(REGISTRY)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SearchSpace):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> tuple:
        return (tuple((m, self.choices(m)) for m in REGISTRY),
                tuple((o, repr(getattr(self, o))) for o in option_names()))

    def __repr__(self) -> str:
        parts = [f"{m}={self.choices(m)}" for m in REGISTRY] + [f"{o}={getattr(self, o)!r}" for o in option_names()]
        return f"SearchSpace({', '.join(parts)})"

    def choices(self, method: str) -> tuple[int, ...]:
        if method in self._choices:
            return self._choices[method]
        return get_method(method).default_choices

    def max_size(self, method: str) -> int:
        return max(self.choices(method))

    def min_size(self, method: str) -> int:
        return min(self.choices(method))

    def holds(self, method: str) -> bool:
        """Whether the space names ``method``: an original method always, a later one when its
        choices are not its default ``[0]``. Methods it does not hold are off and unsearched."""
        m = get_method(method)
        return m.always_written or self.choices(method) != m.default_choices

    @property
    def methods(self) -> tuple[str, ...]:
        """The methods the space holds, in registry order."""
        return tuple(m for m in REGISTRY if self.holds(m))

    # ---- the file format --------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, source: str = "space") -> "SearchSpace":
        if data is not None and not isinstance(data, Mapping):
            raise UniTuneError(f"{source}: expected a mapping of method -> size list (e.g. lora: [0, 4, 8]), "
                               f"got {type(data).__name__} {data!r}")
        data = dict(data or {})
        for key in data:
            if not isinstance(key, str):
                raise UniTuneError(f"{source}: unknown key {key!r}, expected one of "
                                   f"{sorted([*REGISTRY, *option_names()])}")
        if "source" in data:
            raise UniTuneError(f"{source}.source: unknown key, expected one of {sorted([*REGISTRY, *option_names()])}")
        return cls(source=source, **data)

    def to_dict(self) -> dict[str, Any]:
        """The ``space:`` section: the sizes of every method it holds, then their options."""
        held = self.methods
        out: dict[str, Any] = {m: list(self.choices(m)) for m in held}
        for name, (method, option) in option_names().items():
            value = getattr(self, name)
            if method.name in held or value != option.default:
                out[name] = option.dump(value)
        return out


def _rebuild_space(values: dict[str, Any], source: str) -> SearchSpace:
    return SearchSpace(source=source, **values)
