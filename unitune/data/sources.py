"""Data sources on disk, and :func:`build_dataset`, the one entry point for every source.

Layouts (split names are always ``train``, ``val``, ``trainval``, ``test``):

* ``imagefolder``: ``root/train/<class>/*.jpg``, ``root/val/<class>/...``, ``root/test/<class>/...``.
  The class list (sorted folder names) comes from ``train/``; ``val/`` and ``test/`` hold those
  classes, never another one, and every one of them unless ``allow_missing_classes: true`` (a
  class without val or test images is scored on nothing). ``trainval`` is train plus val.
  Without ``val/``, ``val_fraction`` holds val out of ``train/`` (:mod:`unitune.data.split`).
* ``vtab``: the VTAB-1k list layout used by NOAH and its successors,
  ``root/<task>/{train800,val200,train800val200,test}.txt`` with one ``relative/path label`` per
  line, paths relative to ``root/<task>/``. Class names are the label indices as strings unless
  ``root/<task>/classes.txt`` holds one name per line.
* ``fewshot``: the same line format; list files named by the config (NOAH's
  ``annotations/train_meta.list.num_shot_{shots}.seed_{seed}`` by default, see
  :mod:`unitune.data.config`), paths relative to ``root``; optional ``root/classes.txt``.

Everything that can be checked cheaply is checked before training starts: folders and list
files exist, every line parses, labels are integers in range, every listed image exists (the
first missing one is named with its list file and line), no split is empty. Decoding every image
is too slow for big sets, so a corrupt file is reported when it is loaded (or up front with
``check_images: true``).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Callable

import numpy as np
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes

from unitune.checks import check_input_file
from unitune.errors import UniTuneError

from .config import SPLITS, DataConfig
from .datasets import DataError, FileDataset, ImageDataset
from .fractal import fractal_dataset
from .generated import digits_dataset, synthetic_dataset
from .minivtab import minivtab_dataset
from .split import split_off_val

# Class counts beyond this are a label typo, not a data set (ImageNet-21k has 21,843): without a
# classes.txt the count is inferred as 1 + the largest label, and 10**12 would size a head by it.
MAX_CLASSES = 100_000

VTAB_LISTS = {"train": "train800.txt", "val": "val200.txt", "trainval": "train800val200.txt", "test": "test.txt"}
FEWSHOT_KEYS = {"train": "train_list", "val": "val_list", "trainval": "trainval_list", "test": "test_list"}


def build_dataset(cfg: DataConfig, split: str, transform: Callable | None = None) -> ImageDataset:
    """The ``split`` of the configured source, with ``cfg.classes`` and ``cfg.val_subset`` applied.

    ``transform`` maps a PIL RGB image to a tensor (use :func:`unitune.data.build_transform`);
    without one the dataset yields unnormalised ``[0, 1]`` tensors.
    """
    if split not in SPLITS:
        raise UniTuneError(f"split {split!r}: expected one of {list(SPLITS)}")
    if cfg.source == "imagefolder":
        ds = imagefolder_dataset(cfg, split)
    elif cfg.source == "vtab":
        ds = vtab_dataset(cfg, split)
    elif cfg.source == "fewshot":
        ds = fewshot_dataset(cfg, split)
    elif cfg.source == "digits":
        ds = digits_dataset(split)
    elif cfg.source == "synthetic":
        ds = synthetic_dataset(cfg.num_classes, cfg.samples_per_class, cfg.image_size, cfg.seed, split)
    elif cfg.source == "fractal":
        ds = fractal_dataset(cfg.num_classes, cfg.samples_per_class, cfg.image_size, cfg.seed, split)
    elif cfg.source == "minivtab":
        ds = minivtab_dataset(cfg.task, split, cfg.split_sizes, cfg.image_size, cfg.seed)
    else:  # DataConfig already rejects other names
        raise AssertionError(cfg.source)
    if cfg.classes is not None:
        ds = select_classes(ds, cfg.classes, f"{cfg.where}.classes")
    if cfg.source == "imagefolder" and split in ("val", "test") and not cfg.allow_missing_classes:
        check_every_class(ds, split, cfg.where)
    if split == "val" and cfg.val_subset is not None and cfg.val_subset < len(ds):
        ds = fixed_subset(ds, cfg.val_subset, cfg.seed)
    if len(ds) == 0:
        raise DataError(f"{cfg.where}: the {split} split of {ds.name} is empty")
    if ds.num_classes < 2:  # one class "scores" 1.0 whatever the model does
        raise DataError(f"{cfg.where}: {ds.name} has {ds.num_classes} class ({ds.classes}); classification "
                        f"needs at least 2")
    if cfg.check_images:
        ds.check_images()
    ds.transform = transform
    return ds


def select_classes(ds: ImageDataset, classes: tuple[int, ...], where: str = "data.classes") -> ImageDataset:
    """Keep the items of ``classes`` (original indices), relabelled 0..K-1 in the order given."""
    for c in classes:
        if c >= ds.num_classes:
            raise UniTuneError(f"{where}: class {c} out of range, {ds.name} has {ds.num_classes} classes")
    label_map = {c: i for i, c in enumerate(classes)}
    keep = [i for i, t in enumerate(ds.targets) if t in label_map]
    return ds.subset(keep, [ds.classes[c] for c in classes], label_map)


def fixed_subset(ds: ImageDataset, n: int, seed: int) -> ImageDataset:
    """``n`` items chosen once from ``seed`` (kept in their original order), the same in every stage."""
    rng = np.random.default_rng([seed, 0x5A1])
    keep = np.sort(rng.choice(len(ds), size=n, replace=False))
    return ds.subset(keep.tolist(), name=f"{ds.name} (fixed subset of {n})")


# ----------------------------------------------------------------------------------- imagefolder

def imagefolder_dataset(cfg: DataConfig, split: str) -> FileDataset:
    root = _root(cfg)
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DataError(f"{train_dir}: folder not found (imagefolder expects root/train/<class>/<image>)")
    classes, class_to_idx = _find_classes(train_dir)
    if cfg.val_fraction is not None:
        if (root / "val").exists():
            raise DataError(f"{cfg.where}.val_fraction: {root / 'val'} exists; val_fraction holds val out of train/ "
                            f"only when there is no val/ folder (remove one of the two)")
        if split in ("train", "val"):
            train, val = split_off_val(_folder_samples(root, "train", classes, class_to_idx), classes,
                                       cfg.val_fraction, cfg.seed, train_dir)
            return FileDataset(train if split == "train" else val, classes,
                               f"{root} [{split}, val_fraction {cfg.val_fraction}]")
    parts = {"train": ["train"], "val": ["val"], "trainval": ["train", "val"], "test": ["test"]}[split]
    if cfg.val_fraction is not None:  # val is part of train/
        parts = [p for p in parts if p != "val"]
    samples: list[tuple[str, int]] = []
    for part in parts:
        samples += _folder_samples(root, part, classes, class_to_idx, cfg)
    return FileDataset(samples, classes, f"{root} [{split}]")


def _folder_samples(root: Path, part: str, classes: list[str], class_to_idx: dict[str, int],
                    cfg: DataConfig | None = None) -> list[tuple[str, int]]:
    """``(path, label)`` of ``root/part/<class>/...``, labelled by train/'s classes."""
    folder, train_dir = root / part, root / "train"
    if not folder.is_dir():
        hint = (f", or {cfg.where}.val_fraction to hold val out of train/"
                if part == "val" and cfg is not None else "")
        raise DataError(f"{folder}: folder not found (imagefolder expects root/{part}/<class>/<image>{hint})")
    if part != "train":
        extra = sorted(set(_find_classes(folder)[0]) - set(classes))
        if extra:
            raise DataError(f"{folder / extra[0]}: class folder not in {train_dir} (classes come from train/)")
    found = []
    for name in classes if part == "train" else sorted(set(_find_classes(folder)[0])):
        images = _scan_images(folder / name)
        if part == "train" and not images:  # its head row would be trained on no image at all
            raise DataError(f"{folder / name}: class folder holds no images ({', '.join(IMG_EXTENSIONS)})")
        found += [(p, class_to_idx[name]) for p in images]
    if not found:
        raise DataError(f"{folder}: no images (looked for {', '.join(IMG_EXTENSIONS)} in its class folders)")
    return found


def check_every_class(ds: ImageDataset, split: str, where: str) -> None:
    """An imagefolder val or test split must hold every class (``allow_missing_classes`` lifts it)."""
    present = set(ds.targets)
    missing = [name for k, name in enumerate(ds.classes) if k not in present]
    if missing:
        shown = ", ".join(repr(n) for n in missing[:10])
        if len(missing) > 10:
            shown += f" and {len(missing) - 10} more"
        raise DataError(f"{where}: the {split} split ({ds.name}) has no images of "
                        f"class{'es' if len(missing) > 1 else ''} {shown} ({len(missing)} of {ds.num_classes}); "
                        f"add some, or set {where}.allow_missing_classes: true")


def _scan_images(folder: Path) -> list[str]:
    """The image files below ``folder`` (symlinks followed), sorted.

    torchvision's ``make_dataset`` walks with ``followlinks=True`` and loops forever on a symlink
    to an ancestor; here each folder is entered once (by device and inode) and a loop is an error.
    Entries are judged by ``stat``, never opened: a FIFO named ``x.png`` would block the first
    ``open`` forever, so it is refused here, as is a dangling symlink.
    """
    found: list[str] = []
    seen: set[tuple[int, int]] = set()
    stack = [folder]
    while stack:
        current = stack.pop()
        st = current.stat()
        key = (st.st_dev, st.st_ino)
        if key in seen:
            raise DataError(f"{current}: symlink loop (this folder is already scanned as another path)")
        seen.add(key)
        try:
            entries = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError as e:
            raise DataError(f"{current}: cannot list folder ({e.strerror})") from None
        for entry in entries:
            path = Path(entry.path)
            try:
                mode = os.stat(path).st_mode  # follows symlinks
            except FileNotFoundError:
                if path.suffix.lower() in IMG_EXTENSIONS:
                    raise DataError(f"{path}: image not found (a dangling symlink)") from None
                continue
            except OSError as e:  # ELOOP: a symlink to itself
                raise DataError(f"{path}: cannot read ({e.strerror})") from None
            if stat.S_ISDIR(mode):
                stack.append(path)
            elif path.suffix.lower() in IMG_EXTENSIONS:
                if not stat.S_ISREG(mode):
                    raise DataError(f"{path}: not a regular file (a FIFO, socket or device), expected an image")
                found.append(str(path))
    return sorted(found)


def _find_classes(folder: Path) -> tuple[list[str], dict[str, int]]:
    try:
        return find_classes(str(folder))
    except FileNotFoundError:
        raise DataError(f"{folder}: no class folders (expected {folder}/<class>/<image>)") from None
    except OSError as e:  # no permission to list it
        raise DataError(f"{folder}: cannot list folder ({e.strerror})") from None


# ------------------------------------------------------------------------------ vtab and fewshot

def vtab_dataset(cfg: DataConfig, split: str) -> FileDataset:
    root = _root(cfg)
    task_dir = root / cfg.task
    if not task_dir.is_dir():
        raise DataError(
            f"{task_dir}: VTAB-1k task folder not found (expected {cfg.where}.root/<task>/ holding "
            f"{', '.join(VTAB_LISTS.values())})"
        )
    lists = {s: task_dir / name for s, name in VTAB_LISTS.items()}
    return _list_dataset(cfg, lists, task_dir, task_dir / "classes.txt", split, f"vtab {cfg.task}")


def fewshot_dataset(cfg: DataConfig, split: str) -> FileDataset:
    root = _root(cfg)
    lists = {}
    for s, key in FEWSHOT_KEYS.items():
        rel = cfg.list_path(key) or cfg.list_path("train_list")
        lists[s] = root / rel
    return _list_dataset(cfg, lists, root, root / "classes.txt", split, f"fewshot {root.name}")


def read_list(path: Path) -> list[tuple[str, int, int]]:
    """Parse a ``relative/path label`` list: ``(path, label, line number)`` per non-blank line."""
    check_input_file(path, "list file", error=DataError)
    entries = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a UTF-8 text file (byte {e.start}); expected 'relative/path label' lines") from None
    except OSError as e:  # no permission to read it
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    for lineno, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        parts = line.rsplit(maxsplit=1)  # the path may contain spaces, the label never does
        if len(parts) != 2:
            raise DataError(f"{path}:{lineno}: expected 'relative/path label', got {line!r}")
        rel, label = parts
        try:
            value = int(label)
        except ValueError:
            raise DataError(f"{path}:{lineno}: label {label!r} is not an integer") from None
        if value < 0:
            raise DataError(f"{path}:{lineno}: label {value} is negative")
        if value >= MAX_CLASSES:
            raise DataError(f"{path}:{lineno}: label {value} out of range [0, {MAX_CLASSES})")
        entries.append((rel, value, lineno))
    if not entries:
        raise DataError(f"{path}: no samples (expected one 'relative/path label' per line)")
    return entries


def read_classes(path: Path) -> list[str] | None:
    """Class names, one per line (the line index is the label), or None when there is no such file."""
    if not path.exists():
        return None
    check_input_file(path, "class list", error=DataError)
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a UTF-8 text file (byte {e.start}); expected one class name a line") from None
    except OSError as e:  # no permission to read it
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    while names and not names[-1]:
        names.pop()
    for i, name in enumerate(names, 1):
        if not name:
            raise DataError(f"{path}:{i}: empty class name")
    if not names:
        raise DataError(f"{path}: no class names")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise DataError(f"{path}: duplicate class name {dup!r}")
    return names


def _list_dataset(cfg: DataConfig, lists: dict[str, Path], base: Path, classes_file: Path, split: str,
                  name: str) -> FileDataset:
    # Every list is read, not only the split's, so the class count is the same in every stage
    # (inferred from all labels when there is no classes.txt) and a broken list fails early.
    parsed = {s: read_list(p) for s, p in lists.items()}
    classes = read_classes(classes_file)
    if classes is not None and cfg.num_classes is not None and cfg.num_classes != len(classes):
        raise DataError(
            f"{cfg.where}.num_classes: {cfg.num_classes} disagrees with {classes_file} ({len(classes)} classes)"
        )
    bound = len(classes) if classes is not None else cfg.num_classes
    if bound is not None:
        for s, entries in parsed.items():
            for _, label, lineno in entries:
                if label >= bound:
                    origin = classes_file if classes is not None else f"{cfg.where}.num_classes"
                    raise DataError(f"{lists[s]}:{lineno}: label {label} out of range [0, {bound}) ({origin})")
    else:
        bound = 1 + max(label for entries in parsed.values() for _, label, _ in entries)
    if classes is None:
        classes = [str(i) for i in range(bound)]
    samples = []
    for rel, label, lineno in parsed[split]:
        path = base / rel
        if not path.is_file():
            kind = "not a regular file" if path.exists() else "not found"
            raise DataError(f"{lists[split]}:{lineno}: image {rel!r} {kind} ({path})")
        samples.append((path, label))
    return FileDataset(samples, classes, f"{name} [{split}]")


def _root(cfg: DataConfig) -> Path:
    root = Path(os.path.expanduser(cfg.root))
    if not root.is_dir():
        raise DataError(f"{cfg.where}.root: folder {str(root)!r} not found")
    try:  # unreadable, every folder below it would read as "not found"
        with os.scandir(root):
            pass
    except OSError as e:
        raise DataError(f"{cfg.where}.root: {str(root)!r}: cannot list folder ({e.strerror})") from None
    return root
