"""The record of a held-out val split (``data_split.json``): written by the stages, checked by every
later stage in the same run folder, so the search never scores on images the supernet trained on.

Kept apart from :mod:`.split` (the split itself), which :mod:`.sources` imports: the record reads
the datasets that :mod:`.sources` builds.
"""

from __future__ import annotations

import os
from pathlib import Path

from unitune.errors import UniTuneError

from .config import DataConfig
from .sources import imagefolder_dataset
from .split import SPLIT_FILE


def split_record(cfg: DataConfig) -> dict:
    """What :data:`SPLIT_FILE` holds for ``cfg`` (an imagefolder with ``val_fraction``)."""
    train, val = imagefolder_dataset(cfg, "train"), imagefolder_dataset(cfg, "val")
    base = Path(os.path.expanduser(cfg.root)) / "train"
    return {
        "root": str(cfg.root), "val_fraction": cfg.val_fraction, "seed": cfg.seed,
        "train": [p.relative_to(base).as_posix() for p, _ in train.samples],
        "val": [p.relative_to(base).as_posix() for p, _ in val.samples],
    }


def check_split(cfg: DataConfig, path: str | os.PathLike) -> dict | None:
    """The split ``cfg`` makes now (None without ``val_fraction``); a one-line error when ``path``
    records another one."""
    if cfg.source != "imagefolder" or cfg.val_fraction is None:
        return None
    from unitune.io import read_json

    now = split_record(cfg)
    path = Path(path)
    if not path.exists():
        return now
    saved = read_json(path)
    if not isinstance(saved, dict) or any(k not in saved for k in ("val_fraction", "seed", "train", "val")):
        raise UniTuneError(f"{path}: not a split record (expected keys val_fraction, seed, train, val)")
    if (saved["val_fraction"], saved["seed"]) != (now["val_fraction"], now["seed"]):
        raise UniTuneError(f"{path}: this run split val off train/ with val_fraction {saved['val_fraction']} and "
                           f"seed {saved['seed']}, the config now asks for {now['val_fraction']} and seed "
                           f"{now['seed']}; use another run folder (--out) for another split")
    if (saved["train"], saved["val"]) != (now["train"], now["val"]):
        before, after = set(saved["train"]) | set(saved["val"]), set(now["train"]) | set(now["val"])
        added, removed = sorted(after - before), sorted(before - after)
        example = f"e.g. {'added' if added else 'removed'} {(added or removed or ['?'])[0]!r}"
        counts = ", ".join(f"{n} image{'s' if n != 1 else ''} {what}" for n, what in ((len(added), "added"),
                                                                                   (len(removed), "removed")))
        raise UniTuneError(f"{path}: {cfg.root}/train changed since this run split it ({counts}, {example}), so "
                           f"the val split would change; restore the files or use another run folder (--out)")
    return now


def record_split(cfg: DataConfig, path: str | os.PathLike) -> None:
    """Check, then write the split record (atomically); nothing without ``val_fraction``."""
    from unitune.io import write_json_atomic

    record = check_split(cfg, path)
    if record is not None and not Path(path).exists():
        write_json_atomic(path, record)
