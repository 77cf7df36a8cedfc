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

    def compose_node(self, parent, index):
        # PyYAML composes (and later constructs) nested collections recursively: a 5,000-deep
        # list dies in a RecursionError thousands of frames deep. Stop at MAX_DEPTH instead.
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


MAX_YAML_NODES = 100_000  # a large config or subnet list holds a few thousand
# Lists and mappings inside each other in a YAML or JSON file: a config nests 4 deep, a subnet
# list 4; anything near this limit is not a file unitune wrote or documents.
MAX_DEPTH = 100


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
        return safe_load(_read_text(path))
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
        data = json.loads(_read_text(path))
    except UnicodeDecodeError as e:
        raise UniTuneError(f"{path}: not a UTF-8 text file (byte {e.start}); expected JSON") from None
    except json.JSONDecodeError as e:
        raise UniTuneError(f"{path}: invalid JSON (line {e.lineno}): {e.msg}") from None
    except RecursionError:  # the C decoder's own guard, far below what it would take
        raise UniTuneError(f"{path}: invalid JSON: nested deeper than {MAX_DEPTH} levels") from None
    if _depth(data) > MAX_DEPTH:
        raise UniTuneError(f"{path}: invalid JSON: nested deeper than {MAX_DEPTH} levels")
    return data


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except PermissionError:
        raise UniTuneError(f"{path}: cannot read (permission denied)") from None


def _depth(data: Any) -> int:
    """How deep lists and mappings nest in ``data`` (iteratively: no recursion to overflow)."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, (list, dict)):
            deepest = max(deepest, level)
            if level <= MAX_DEPTH:  # beyond the limit the answer is known
                stack += [(v, level + 1) for v in (node.values() if isinstance(node, dict) else node)]
    return deepest


# ---- paths inside a run folder -------------------------------------------------------------------
#
# Every file a command writes lies inside its output folder: a name from a config (``name``, a
# task) is a plain name, never a path, and a link planted inside the folder that leads out of it
# is refused (named, before any work) rather than written through. Refused, not replaced: such a
# link may be somebody's deliberate choice (checkpoints on a bigger disk), and a tool that
# silently deletes it, or writes a checkpoint through it, surprises them either way.

_PLAIN = re.compile(r"[A-Za-z0-9._-]+")


def check_plain_name(value: Any, where: str) -> str:
    """A name that becomes one folder or file name: letters, digits, ``.``, ``_``, ``-``; not
    ``.`` or ``..`` (so never a path: no separator, nothing absolute)."""
    if not isinstance(value, str) or not _PLAIN.fullmatch(value) or value in (".", ".."):
        raise UniTuneError(f"{where}: expected a plain name (letters, digits, '.', '_', '-'; it names a folder), "
                           f"got {value!r}")
    return value


def _resolve(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise UniTuneError(f"{path}: cannot resolve ({getattr(e, 'strerror', None) or e})") from None


def inside(root: str | os.PathLike, path: str | os.PathLike) -> Path:
    """``path``, checked to lie inside ``root`` once links are followed; a UniTuneError names it
    otherwise."""
    root, path = Path(root), Path(path)
    real_root, real = _resolve(root), _resolve(path)
    if real != real_root and real_root not in real.parents:
        raise UniTuneError(f"{path}: leads to {real}, outside the output folder {root}; unitune writes only "
                           f"inside it (remove the link, or use another folder)")
    return path


MAX_SCANNED = 200_000  # entries of a run folder looked at for links; a run holds a few thousand


def check_no_outside_links(root: str | os.PathLike) -> None:
    """Refuse a run folder with a link inside that leads out of it (``plots -> /elsewhere``): every
    stage writes into its folder's entries, so such a link would be written through."""
    root = Path(root)
    if not root.is_dir():
        return
    stack, seen = [root], 0
    while stack and seen < MAX_SCANNED:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:  # unreadable: the stage that needs it reports it
            continue
        for entry in entries:
            seen += 1
            if entry.is_symlink():
                inside(root, entry.path)
            elif entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
