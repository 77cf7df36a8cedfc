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
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator

import yaml

from .errors import UniTuneError


# ---- temporary files and what a killed writer leaves behind --------------------------------------
#
# A write goes to ``.NAME.<host>-<pid>.<random>.tmp`` beside its target and is renamed onto it once
# complete. A process killed in between (SIGKILL, power loss) leaves that file behind; readers
# never see it (they open exact names, and the dot hides it from listings). The next write of
# the same target removes such leftovers whose writer provably no longer runs: same host, and no
# process with that pid. A live writer's file, or one from another host sharing the folder, is
# left alone, so concurrent writers (two search workers writing best_subnet.yaml) never collide.


def temp_prefix(target: Path) -> str:
    """``.NAME.<host>-<pid>.``: the prefix of this process's temporary files for ``target``."""
    return f".{target.name}.{socket.gethostname()}-{os.getpid()}."


def _writer_is_dead(owner: str) -> bool:
    host, _, pid = owner.rpartition("-")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's live process
        return False
    return False


def stale_temps(target: Path, suffix: str = ".tmp") -> list[Path]:
    """Leftovers ``.NAME.<host>-<pid>.<random><suffix>`` of writers of ``target`` that died."""
    target = Path(target)
    head = f".{target.name}."
    found = []
    try:
        entries = list(os.scandir(target.parent))
    except FileNotFoundError:
        return []
    for entry in entries:
        name = entry.name
        if not (name.startswith(head) and name.endswith(suffix)):
            continue
        owner, dot, _ = name[len(head):-len(suffix)].rpartition(".")
        if dot and _writer_is_dead(owner):
            found.append(Path(entry.path))
    return found


def remove_stale_temps(target: Path) -> None:
    for p in stale_temps(target):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    On any exception the temporary file is removed and ``path`` is left as it was. The file gets
    the permissions a plain ``open(path, "w")`` would give (``mkstemp`` makes it private), and
    leftovers of killed writers of ``path`` are removed first (see above).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
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


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_yaml_atomic(path: str | os.PathLike, data: Any) -> None:
    write_text_atomic(path, yaml.safe_dump(data, sort_keys=False, default_flow_style=None))


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


class SafeLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading numbers like ``1e-3`` as floats, refusing duplicate keys
    and alias bombs.

    PyYAML follows YAML 1.1, where a float needs a dot (``1.0e-3``): ``lr: 1e-3``, the way every
    recipe writes it, would load as the *string* '1e-3'. This adds YAML 1.2's float syntax.

    A mapping that repeats a key (or a config that repeats a section) keeps the last one silently
    in PyYAML; here it is an error naming the key and both lines. Aliases are expanded lazily by
    PyYAML into shared objects, so a "billion laughs" file loads in microseconds and explodes in
    whatever walks it next (a deepcopy, ``json.dumps``, timm's kwargs): the composed document may
    reference at most :data:`MAX_YAML_NODES` nodes, counted with every alias expanded.
    """

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # an unhashable key: PyYAML's own error follows
                    continue
                if first is not key_node:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first at line {first.start_mark.line + 1})",
                        key_node.start_mark)
        return super().construct_mapping(node, deep=deep)

    def compose_document(self):
        node = super().compose_document()
        _count_nodes(node)
        return node


MAX_YAML_NODES = 100_000  # a large config or subnet list holds a few thousand


def _count_nodes(root: Any) -> None:
    """Count the nodes of ``root`` as if every alias were expanded; stop at the limit."""
    count, stack = 0, [root]
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_YAML_NODES:
            raise yaml.composer.ComposerError(
                None, None, f"more than {MAX_YAML_NODES:,} values once aliases are expanded (an alias bomb?)",
                root.start_mark)
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                stack += (k, v)
        elif isinstance(node, yaml.SequenceNode):
            stack += node.value


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
    """Load a YAML file with the safe loader; a missing, binary or malformed file is a user error."""
    from .checks import check_input_file

    path = check_input_file(path)
    try:
        with open(path, encoding="utf-8") as f:
            return safe_load(f)
    except UnicodeDecodeError as e:
        raise UniTuneError(f"{path}: not a UTF-8 text file (byte {e.start}); expected YAML") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UniTuneError(f"{path}: invalid YAML{where}: {problem}") from None


def read_json(path: str | os.PathLike) -> Any:
    from .checks import check_input_file

    path = check_input_file(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise UniTuneError(f"{path}: not a UTF-8 text file (byte {e.start}); expected JSON") from None
    except json.JSONDecodeError as e:
        raise UniTuneError(f"{path}: invalid JSON (line {e.lineno}): {e.msg}") from None
