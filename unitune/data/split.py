"""``data.val_fraction``: the val split of an ImageFolder that has only ``train/`` and ``test/``.

Held out of ``train/`` per class (stratified), so every class is in both halves: a class of ``n``
images gives ``round(fraction * n)`` of them to val, at least 1 and at most ``n - 1``; a class
with a single image cannot be split and is refused. Which images go is drawn from ``data.seed``
(the data seed, as for ``val_subset``), so the split is a pure function of the file list, the
fraction and the seed: every stage and every rerun computes the same one. ``trainval`` stays all
of ``train/`` (the retrain stage trains on both halves).

The stages record the split in the run folder (``data_split.json``: the fraction, the seed and
both file lists, relative to ``train/``). A later stage in that folder recomputes the split and
refuses to go on when it differs (files added to or removed from ``train/``, another fraction or
seed): a search whose val images trained the supernet would be scored on its own training data.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from unitune.errors import UniTuneError

from .config import DataConfig
from .datasets import DataError

SPLIT_FILE = "data_split.json"


def split_off_val(samples: Sequence[tuple[str, int]], classes: Sequence[str], fraction: float, seed: int,
                  train_dir: Path) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """``(train, val)``: ``samples`` (``(path, label)``, in a fixed order) cut per class; both keep
    the order of ``samples``."""
    by_class: dict[int, list[int]] = {}
    for i, (_, label) in enumerate(samples):
        by_class.setdefault(label, []).append(i)
    held: set[int] = set()
    for label, items in sorted(by_class.items()):
        n = len(items)
        if n < 2:
            raise DataError(f"{train_dir / classes[label]}: 1 image; data.val_fraction needs at least 2 per "
                            f"class (one to train on, one to validate)")
        k = min(max(1, math.floor(fraction * n + 0.5)), n - 1)
        # One generator per class, seeded by (seed, label): a class's split depends on its own files only.
        rng = np.random.default_rng([seed, 0x7A1, label])
        held.update(items[j] for j in rng.choice(n, size=k, replace=False).tolist())
    train = [s for i, s in enumerate(samples) if i not in held]
    val = [s for i, s in enumerate(samples) if i in held]
    return train, val


def split_record(cfg: DataConfig) -> dict:
    """What :data:`SPLIT_FILE` holds for ``cfg`` (an imagefolder with ``val_fraction``)."""
    from .sources import imagefolder_dataset

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
