"""The method registry, in the way HF PEFT registers its tuners: one module per method.

``METHODS`` maps each registered method's name to its :class:`Method`, in registration order —
the order of Optuna parameters (``lora.00 … ssf.11, ssf_global``), of subnet and space files and
of every table. To add a method, see :mod:`unitune.supernet.methods.base`.
"""

from __future__ import annotations

from unitune.errors import UniTuneError

from .base import BACKBONE_FAMILY, HEAD_FAMILY, SITES, Method, Option

METHODS: dict[str, Method] = {}
# Keys a space or subnet file uses besides method names: a method may not take one.
_RESERVED = {"backbone", "subnet", "meta", "source"}


def register_method(method: Method) -> Method:
    """Add ``method`` to the registry (after the ones already there); returns it."""
    if not isinstance(method, Method):
        raise TypeError(f"register_method: expected a Method instance, got {type(method).__name__}")
    name = method.name
    if not name.isidentifier() or name in _RESERVED or "." in name:
        raise ValueError(f"register_method: {name!r} is not a usable method name")
    if name in METHODS:
        raise ValueError(f"register_method: a method named {name!r} is already registered")
    if method.site not in SITES:
        raise ValueError(f"register_method: {name}.site must be one of {list(SITES)}, got {method.site!r}")
    if method.family == "":  # an out-of-tree method that names none trains in a family of its own
        method.family = name
    if not isinstance(method.family, str) or not method.family.isidentifier() or \
            method.family in (HEAD_FAMILY, BACKBONE_FAMILY):
        raise ValueError(f"register_method: {name}.family must name its optimiser family "
                         f"(e.g. 'low_rank'), got {method.family!r}")
    taken = set(METHODS) | set(option_names())
    for option in method.options:
        if option.name in taken or option.name == name:
            raise ValueError(f"register_method: {name}'s option {option.name!r} clashes with an existing key")
        taken.add(option.name)
    method.check_choices(method.default_choices, f"{name}.default_choices")
    METHODS[name] = method
    return method


def get_method(name: str) -> Method:
    """The registered method ``name``; an unknown name is a one-line error listing the known ones."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise UniTuneError(f"unknown method {name!r}, expected one of {list(METHODS)}") from None


def block_methods() -> tuple[Method, ...]:
    return tuple(m for m in METHODS.values() if m.site == "block")


def model_methods() -> tuple[Method, ...]:
    return tuple(m for m in METHODS.values() if m.site == "model")


def families() -> tuple[str, ...]:
    """Every optimiser family a learning-rate multiplier may name: the head, the backbone (full
    fine-tuning), then the registered methods' families in registration order."""
    return tuple(dict.fromkeys((HEAD_FAMILY, BACKBONE_FAMILY, *(m.family for m in METHODS.values()))))


def option_names() -> dict[str, tuple[Method, Option]]:
    """Every method's space options by name: ``{"lora_scale": (LoRA, Option(...)), ...}``."""
    return {o.name: (m, o) for m in METHODS.values() for o in m.options}


# The built-in methods. Order is part of the file formats and of every existing study: append only.
from .lora import LoRA  # noqa: E402
from .adapter import Adapter  # noqa: E402
from .vpt import VPT  # noqa: E402
from .ssf import BlockSSF  # noqa: E402
from .ssf_global import GlobalSSF  # noqa: E402
from .bitfit import BitFitMethod  # noqa: E402
from .dora import DoRA  # noqa: E402
from .adapter_plus import AdapterPlusMethod  # noqa: E402
from .vera import VeRA  # noqa: E402

register_method(LoRA())
register_method(Adapter())
register_method(VPT())
register_method(BlockSSF())
register_method(GlobalSSF())
register_method(BitFitMethod())
register_method(DoRA())
register_method(AdapterPlusMethod())
register_method(VeRA())

__all__ = ["METHODS", "Method", "Option", "register_method", "get_method", "block_methods", "model_methods",
           "option_names", "families"]
