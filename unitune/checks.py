"""Checks of what a user hands a command, one function per kind, run before any work starts.

Every command checks its paths, output locations, device string and number ranges here, so the
same mistake gets the same one-line :class:`UniTuneError` from every command, and a late crash
(an ``--out`` that turns out to be a file after the first epoch, a FIFO that blocks ``open``
forever) cannot happen.
"""

from __future__ import annotations

import ipaddress
import math
import os
import stat
from pathlib import Path

from .errors import UniTuneError

# torch.device types a user may name; "auto" picks CUDA when present.
DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu", "meta")
SEED_MAX = 2**32 - 1  # numpy's and Python's seeding take 32-bit seeds; torch takes 64 but we hand it the same


def check_device(name: object, where: str = "device") -> str:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N``, ... (not whether CUDA is present: see pick_device)."""
    if not isinstance(name, str):
        raise UniTuneError(f"{where}: expected a string such as 'auto', 'cpu' or 'cuda', got {name!r}")
    if name == "auto":
        return name
    kind, sep, index = name.partition(":")
    if kind not in DEVICE_TYPES or (sep and not index.isdigit()):
        raise UniTuneError(f"{where}: unknown device {name!r}, expected 'auto', "
                           f"{', '.join(repr(t) for t in DEVICE_TYPES)} or e.g. 'cuda:1'")
    return name


def check_number(value: object, where: str, *, ge: float | None = None, gt: float | None = None,
                 le: float | None = None, lt: float | None = None) -> None:
    """A finite number within the given bounds (``None`` passes: optional fields)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UniTuneError(f"{where}: expected a finite number, got {value!r}")
    low, high = (ge, "[") if ge is not None else (gt, "("), (le, "]") if le is not None else (lt, ")")
    if ((ge is not None and value < ge) or (gt is not None and value <= gt)
            or (le is not None and value > le) or (lt is not None and value >= lt)):
        if low[0] is not None and high[0] is not None:
            want = f"in {low[1]}{low[0]:g}, {high[0]:g}{high[1]}"
        elif low[0] is not None:
            want = f"{'>=' if ge is not None else '>'} {low[0]:g}"
        else:
            want = f"{'<=' if le is not None else '<'} {high[0]:g}"
        raise UniTuneError(f"{where}: expected a number {want}, got {value!r}")


def check_seed(value: object, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
        raise UniTuneError(f"{where}: expected an integer seed in [0, 2**32 - 1], got {value!r}")


def check_port(port: int, where: str = "--port") -> int:
    if not 1 <= port <= 65535:
        raise UniTuneError(f"{where}: expected a TCP port in [1, 65535], got {port}")
    return port


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---- paths --------------------------------------------------------------------------------------


def check_input_file(path: str | os.PathLike, what: str = "file", nonempty: bool = False,
                     error: type[UniTuneError] = UniTuneError) -> Path:
    """An existing regular file (a symlink to one is fine): a FIFO, device or socket would block or
    stream forever on ``open``, so it is refused from its ``stat``, never opened."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except OSError as e:  # a symlink loop (ELOOP), a component that is a file (ENOTDIR), no permission
        raise error(f"{path}: cannot read {what} ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{path}: is a folder, expected a {what}")
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path}: not a regular file (a FIFO, socket or device), expected a {what}")
    if nonempty and st.st_size == 0:
        raise error(f"{path}: empty file, expected a {what}")
    return path


def _check_writable_parent(path: Path, flag: str) -> None:
    """The nearest existing ancestor of ``path`` must be a folder we may create entries in."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        if parent.is_symlink():  # a dangling symlink: mkdir would fail on it
            raise UniTuneError(f"{flag} {path}: {parent} is a broken symlink")
        parent = parent.parent
    if not parent.is_dir():
        raise UniTuneError(f"{flag} {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UniTuneError(f"{flag} {path}: cannot write in {parent} (permission denied or read-only)")


def check_output_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """A folder that exists or can be created, and can be written in."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise UniTuneError(f"{flag} {path}: exists and is not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise UniTuneError(f"{flag} {path}: cannot write in this folder (permission denied or read-only)")
        return path
    _check_writable_parent(path, flag)
    return path


def check_output_file(path: str | os.PathLike, flag: str = "--out") -> Path:
    """A file path whose folder exists or can be created; an existing folder is not a file."""
    path = Path(path)
    if path.is_dir():
        raise UniTuneError(f"{flag} {path}: is a folder, expected a file name (e.g. {path}/subnets.yaml)")
    if path.exists() and not path.is_file():
        raise UniTuneError(f"{flag} {path}: not a regular file")
    _check_writable_parent(path, flag)
    return path


def check_safetensors_file(path: str | os.PathLike, what: str = "weights file") -> Path:
    """A regular file whose safetensors header parses: a truncated file or a pickle renamed
    ``.safetensors`` is named here, not deep inside timm's loader."""
    from safetensors import safe_open

    path = check_input_file(path, what)
    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except Exception as e:  # safetensors raises its own SafetensorError, or OSError
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise UniTuneError(f"{path}: not a readable safetensors {what} ({reason}); delete it and "
                           f"make it again") from None
    return path
