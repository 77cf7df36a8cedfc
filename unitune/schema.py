"""Config constraints declared beside their fields, and the one function that enforces them.

A config section is a frozen dataclass; each field's constraint sits in its definition::

    lr: float = num(1e-3, gt=0)                          # a range (floats must also be finite)
    seed: int = seed_field()                             # an integer seed in [0, 2**32 - 1]
    sampler: str = choice("uniform", ("uniform", ...))   # one of a few names
    batch_size: int = count(64, ge=1)                    # an integer >= 1 (None allowed if the default is)
    root: str | None = text(None)                        # a string or null
    check_images: bool = flag(False)                     # true or false
    warmup_epochs: int = num(0, ge=0, rule=within_epochs)  # plus a rule over other fields

:func:`check_fields` runs them: every field's own check first (types, ranges, seeds), then
choices and rules in field order, so that a rule never reads a value that is itself wrong. Each
failure is one line, ``<where>.<field>: expected ..., got ...``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

from .checks import check_number, check_seed
from .errors import UniTuneError

Rule = Callable[[Any, str], None]  # rule(section, where) raises UniTuneError naming its field


def _field(default: Any, rule: Rule | None, **metadata: Any) -> Any:
    return dataclasses.field(default=default, metadata={**metadata, **({"rule": rule} if rule else {})})


def num(default: Any, *, rule: Rule | None = None, **bounds: float) -> Any:
    """A numeric field with its range: ``lr: float = num(1e-3, gt=0)``. Every float must also be
    finite (a NaN learning rate would only die inside AdamW)."""
    return _field(default, rule, range=bounds)


def seed_field(default: int = 0) -> Any:
    return _field(default, None, seed=True)


def choice(default: Any, options: Sequence[str], *, rule: Rule | None = None) -> Any:
    """A field naming one of ``options`` (``dataclasses.MISSING`` as the default: a required one)."""
    return _field(default, rule, choices=tuple(options))


def count(default: int | None, ge: int, *, rule: Rule | None = None) -> Any:
    """An integer ``>= ge`` (not a bool); null only where the default is null."""
    return _field(default, rule, count=ge)


def text(default: str | None = None, *, rule: Rule | None = None) -> Any:
    """A string, or null."""
    return _field(default, rule, text=True)


def flag(default: bool, *, rule: Rule | None = None) -> Any:
    return _field(default, rule, flag=True)


def rule_only(default: Any, rule: Rule) -> Any:
    """A field whose whole constraint is a rule (a list checked element by element, say)."""
    return _field(default, rule)


def _check_own(f: dataclasses.Field, value: Any, where: str, default: Any) -> None:
    meta = f.metadata
    if meta.get("seed"):
        check_seed(value, where)
    elif "range" in meta:
        check_number(value, where, **meta["range"])
    elif "count" in meta:
        if value is None and default is None:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < meta["count"]:
            raise UniTuneError(f"{where}: expected an integer >= {meta['count']}, got {value!r}")
    elif meta.get("text"):
        if value is not None and not isinstance(value, str):
            raise UniTuneError(f"{where}: expected a string, got {value!r}")
    elif meta.get("flag"):
        if not isinstance(value, bool):
            raise UniTuneError(f"{where}: expected true or false, got {value!r}")
    elif isinstance(value, float):
        check_number(value, where)


def check_fields(obj: Any, where: str) -> None:
    """Enforce every declared constraint of the dataclass ``obj``; ``where`` names the section."""
    fields = dataclasses.fields(obj)
    for f in fields:
        _check_own(f, getattr(obj, f.name), f"{where}.{f.name}", f.default)
    for f in fields:
        options = f.metadata.get("choices")
        if options is not None and getattr(obj, f.name) not in options:
            raise UniTuneError(f"{where}.{f.name}: expected one of {list(options)}, got {getattr(obj, f.name)!r}")
        if "rule" in f.metadata:
            f.metadata["rule"](obj, where)
