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

A JSON record read back from a file (an export's ``unitune.json``, a ``peft_config.json``) is
declared the same way, one line per key, its JSON type and any constraint beside it::

    EXPORT = {"format": json_key(str, equals("unitune-export")), "format_version": json_key(int, version(1)),
              "class_names": json_key((list, type(None))), "weights": json_key(dict, digest("sha256"))}

and :func:`check_record` runs it: every key's presence and type first (a bool is never an int),
then the constraints in key order; each failure is one line naming the file and the key.

**One style for every section: this schema, not a library (decided in issue 22).** pydantic was
the candidate; it is not installed, not in ``constraints.txt`` and would be the one compiled
dependency (pydantic-core) a config needs beside torch, timm and optuna. Its errors are a
multi-line block in its own words ("1 validation error for ... Input should be ..."), so each of
the ~170 one-line messages tests/test_bad_input.py pins would need a translation layer, and its
lax mode turns ``"3"`` into 3 and ``1`` into ``True`` where the config refuses both. What it
would add (a declared field per key) this module already gives in ~150 lines. So every section
is a frozen dataclass checked by ``unitune.engine.config.from_mapping`` and :func:`check_fields`:
``search.sampler``, ``search.fitness`` and ``search.pruner`` are :func:`choice` fields over names
the config declares (search/ imports them from there), ``search.objectives`` a rule, and
``search.rerank`` a nested section (``RerankConfig``, kept a mapping in the run config as
manifests record it). ``space`` is the one section whose keys are not known here: each
registered method declares its size choices and options with their checks beside it
(``unitune.supernet.methods``: the library layer cannot import the run config), in the same
one-line ``<where>.<key>: expected ..., got ...`` form, and ``load_run_config`` runs them with
the other sections, before any stage.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

from .checks import check_number, check_seed
from .errors import UniTuneError

Rule = Callable[[Any, str], None]  # rule(section, where) raises UniTuneError naming its field


def _field(default: Any, rule: Rule | None, **metadata: Any) -> Any:
    metadata = {**metadata, **({"rule": rule} if rule else {})}
    if isinstance(default, dataclasses.Field):  # dataclasses.field(default_factory=...): a mutable default
        return dataclasses.field(default_factory=default.default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def num(default: Any, *, rule: Rule | None = None, **bounds: float) -> Any:
    """A numeric field with its range: ``lr: float = num(1e-3, gt=0)``. Every float must also be
    finite (a NaN learning rate would only die inside AdamW)."""
    return _field(default, rule, range=bounds)


def seed_field(default: int = 0) -> Any:
    return _field(default, None, seed=True)


def choice(default: Any, options: Sequence[str], *, rule: Rule | None = None) -> Any:
    """A field naming one of ``options`` (``dataclasses.MISSING`` as the default: a required one)."""
    return _field(default, rule, choices=tuple(options))


def count(default: int | None, ge: int, *, le: int | None = None, rule: Rule | None = None,
          expected: str | None = None) -> Any:
    """An integer ``>= ge`` (and ``<= le``, when given; not a bool); null only where the default is null.
    ``expected`` words the error (``a non-negative integer``) where a message is already known by heart."""
    extra = {**({"count_max": le} if le is not None else {}), **({"expected": expected} if expected else {})}
    return _field(default, rule, count=ge, **extra)


def text(default: str | None = None, *, rule: Rule | None = None) -> Any:
    """A string, or null."""
    return _field(default, rule, text=True)


def flag(default: bool, *, rule: Rule | None = None) -> Any:
    return _field(default, rule, flag=True)


def rule_only(default: Any, rule: Rule) -> Any:
    """A field whose whole constraint is a rule (a list checked element by element, a nested
    section checked as its own dataclass: ``search.rerank``). ``default`` may be a
    ``dataclasses.field(default_factory=...)`` for a mutable default."""
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
            expected = meta.get("expected") or f"an integer >= {meta['count']}"
            raise UniTuneError(f"{where}: expected {expected}, got {value!r}")
        if "count_max" in meta and value > meta["count_max"]:
            raise UniTuneError(f"{where}: expected an integer in [{meta['count']}, {meta['count_max']}], got {value!r}")
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


# ---- JSON records ------------------------------------------------------------------------------

KeyRule = Callable[[str, Any, str], None]  # rule(key, value, where) raises UniTuneError


@dataclasses.dataclass(frozen=True)
class Key:
    """One key of a JSON record: its JSON type(s) and the constraint on its value, if any."""

    kind: type | tuple[type, ...]
    rule: KeyRule | None = None


def json_key(kind: type | tuple[type, ...], rule: KeyRule | None = None) -> Key:
    return Key(kind, rule)


def equals(expected: Any) -> KeyRule:
    """The one value a key may hold (a file format's name)."""
    def rule(name: str, value: Any, where: str) -> None:
        if value != expected:
            raise UniTuneError(f"{where}: {name!r} is {value!r}, expected {expected!r}")
    return rule


def version(supported: int) -> KeyRule:
    """A format version this unitune reads."""
    def rule(name: str, value: Any, where: str) -> None:
        if value != supported:
            raise UniTuneError(f"{where}: {name} {value} is not supported (this unitune reads {supported})")
    return rule


def digest(field: str = "sha256", length: int = 64) -> KeyRule:
    """A mapping whose ``field`` is a hex digest string of ``length`` characters."""
    def rule(name: str, value: Any, where: str) -> None:
        got = value.get(field)
        if not isinstance(got, str) or len(got) != length:
            raise UniTuneError(f"{where}: '{name}.{field}' must be a {length}-character hex digest")
    return rule


def check_record(record: Any, keys: Mapping[str, Key], where: str) -> dict[str, Any]:
    """``record`` checked against ``keys`` (it may hold more keys); ``where`` names the file."""
    if not isinstance(record, dict):
        raise UniTuneError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for name, spec in keys.items():
        if name not in record:
            raise UniTuneError(f"{where}: missing key {name!r}")
        value = record[name]
        if not isinstance(value, spec.kind) or isinstance(value, bool):
            raise UniTuneError(f"{where}: {name!r} has the wrong type ({type(value).__name__})")
    for name, spec in keys.items():  # after every type check: a rule reads a value of its type
        if spec.rule is not None:
            spec.rule(name, record[name], where)
    return record
