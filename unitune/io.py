"""Safe, atomic file I/O.

Every write that matters goes to a temporary file in the target's folder and is renamed over
the target only once complete, so a crash never leaves a half-written checkpoint, subnet or
export behind. Loading never unpickles: YAML through the safe loader, tensors through
safetensors.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator

import yaml

from .errors import UniTuneError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    On any exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        # mkstemp (and safetensors) create 0600; a published file gets the usual mode
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as f:  # flush file contents to disk before the rename publishes them
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_yaml_atomic(path: str | os.PathLike, data: Any) -> None:
    write_text_atomic(path, yaml.safe_dump(data, sort_keys=False, default_flow_style=None))


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


class SafeLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading numbers like ``1e-3`` as floats.

    PyYAML follows YAML 1.1, where a float needs a dot (``1.0e-3``): ``lr: 1e-3``, the way every
    recipe writes it, would load as the *string* '1e-3'. This adds YAML 1.2's float syntax.
    """


SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def safe_load(text: Any) -> Any:
    """``yaml.safe_load`` with :class:`SafeLoader` (``1e-3`` is a float)."""
    return yaml.load(text, Loader=SafeLoader)


def read_yaml(path: str | os.PathLike) -> Any:
    """Load a YAML file with the safe loader; a missing or malformed file is a user error."""
    path = Path(path)
    if not path.is_file():
        raise UniTuneError(f"{path}: file not found")
    try:
        with open(path) as f:
            return safe_load(f)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UniTuneError(f"{path}: invalid YAML{where}: {problem}") from None


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise UniTuneError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UniTuneError(f"{path}: invalid JSON (line {e.lineno}): {e.msg}") from None
