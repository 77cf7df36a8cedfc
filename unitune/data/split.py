"""``data.val_fraction``: the val split of an ImageFolder that has only ``train/`` and ``test/``.

Held out of ``train/`` per class (stratified), so every class is in both halves: a class of ``n``
images gives ``round(fraction * n)`` of them to val, at least 1 and at most ``n - 1``; a class
with a single image cannot be split and is refused. Which images go is drawn from ``data.seed``
(the data seed, as for ``val_subset``), so the split is a pure function of the file list, the
fraction and the seed: every stage and every rerun computes the same one. ``trainval`` stays all
of ``train/`` (the retrain stage trains on both halves).

The stages record the split in the run folder (``data_split.json``: the fraction, the seed and
both file lists, relative to ``train/``; :mod:`.split_record`). A later stage in that folder recomputes the split and
refuses to go on when it differs (files added to or removed from ``train/``, another fraction or
seed): a search whose val images trained the supernet would be scored on its own training data.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

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


def repeated_splits(targets: Sequence[int], n_val: int, splits: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """``splits`` random (train, val) partitions of ``range(len(targets))`` with ``n_val`` items in
    val, stratified by class where every class has two or more items (scikit-learn's
    ``StratifiedShuffleSplit``; else ``ShuffleSplit``), drawn from ``seed``: the noise-aware
    selection's repeated splits of train+val (:mod:`unitune.search.selection`)."""
    from sklearn.model_selection import ShuffleSplit, StratifiedShuffleSplit

    y = np.asarray(targets)
    if not 0 < n_val < len(y):
        raise ValueError(f"repeated_splits: n_val {n_val} of {len(y)} items: expected 0 < n_val < items")
    counts = np.bincount(y)
    n_classes = int((counts > 0).sum())
    stratify = counts[counts > 0].min() >= 2 and n_classes <= n_val and n_classes <= len(y) - n_val
    kind = StratifiedShuffleSplit if stratify else ShuffleSplit
    cut = kind(n_splits=splits, test_size=n_val, random_state=seed)
    return [(sorted(a.tolist()), sorted(b.tolist())) for a, b in cut.split(np.zeros(len(y)), y if stratify else None)]


def fold_splits(targets: Sequence[int], folds: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """``folds`` (train, val) partitions of ``range(len(targets))`` whose vals are disjoint and
    cover every item once (k folds, shuffled from ``seed``), stratified by class (scikit-learn's
    ``StratifiedKFold``; a class with fewer items than folds is spread as far as it goes) unless no
    class has ``folds`` items (then ``KFold``): the selection's k-fold rule, which judges on all of
    train+val where :func:`repeated_splits` draws one val-sized sample per split."""
    import warnings

    from sklearn.model_selection import KFold, StratifiedKFold

    y = np.asarray(targets)
    if not 2 <= folds <= len(y):
        raise ValueError(f"fold_splits: {folds} folds of {len(y)} items: expected 2 <= folds <= items")
    stratify = np.bincount(y).max() >= folds
    cut = (StratifiedKFold if stratify else KFold)(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # "the least populated class has only n members": said in the docstring
        warnings.simplefilter("ignore", UserWarning)
        return [(sorted(a.tolist()), sorted(b.tolist()))
                for a, b in cut.split(np.zeros(len(y)), y if stratify else None)]
