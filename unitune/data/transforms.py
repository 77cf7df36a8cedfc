"""Image preprocessing, built in one place from the backbone's timm data config.

NOAH's supernet and search normalised images differently; here every stage (supernet, search,
retrain, evaluate, predict) calls :func:`build_transform` with the same data config, so input
size, interpolation, mean and std cannot drift apart. Two traps this module handles:

* timm's ``resolve_model_data_config`` reports the *pretrained* config's input size, not the size
  the model was built with (a ``vit_tiny_patch16_224`` built with ``img_size=32`` still says 224);
  :func:`resolve_data_config` takes the size from the patch embedding instead — also with
  ``dynamic_img_size=True``: such a model *accepts* other sizes, but it was built (and its
  position embedding laid out) for ``img_size``, so that is the size to train and test at.
* ``resize: squash`` (VTAB-1k, NOAH: resize straight to the input size, aspect ratio not kept,
  nothing cropped) is timm's ``crop_mode='squash'`` with ``crop_pct=1.0``; ``resize: crop`` keeps
  the backbone's own resize + center crop (``crop_pct``, usually 0.875-0.9).

Without augmentation the training transform *is* the evaluation transform (the VTAB recipe trains
on exactly what it evaluates). ``augment: randaugment`` (few-shot recipes) is timm's training
pipeline: random-resized crop, horizontal flip, RandAugment ``rand-m9-mstd0.5-inc1``, ending in
the same normalisation. ``augment: shift`` is the small-image recipe (CIFAR's): a random
translation by up to an eighth of the side (reflect-padded, then cropped back) and a horizontal
flip, before the evaluation pipeline; the suite's fractal pretraining uses it so that the same
cached image is seen at a new position each epoch. Mixup, cutmix and label smoothing act on batches and live in the trainer.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

import timm.data
import torchvision.transforms as T
from PIL import Image
from torch import nn

from unitune.errors import UniTuneError

from .config import DataConfig

RANDAUGMENT = "rand-m9-mstd0.5-inc1"
DATA_CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming", "random")  # timm's names
CROP_MODES = ("center", "squash", "border")
MAX_INPUT_SIZE = 8192  # pixels a side; a typo beyond it would allocate a huge resize


def resolve_data_config(model: nn.Module) -> dict[str, Any]:
    """The backbone's preprocessing as a plain dict with timm's keys (:data:`DATA_CONFIG_KEYS`).

    Save this dict with checkpoints and exports (with the ``data:`` config): :func:`build_transform`
    rebuilds the identical pipeline from the two without the model.
    """
    dc = dict(timm.data.resolve_model_data_config(model))
    patch_embed = getattr(model, "patch_embed", None)
    img_size = getattr(patch_embed, "img_size", None)
    if img_size is not None:
        proj = getattr(patch_embed, "proj", None)
        chans = getattr(proj, "in_channels", dc["input_size"][0])
        dc["input_size"] = (int(chans), int(img_size[0]), int(img_size[1]))
    return _normalise(dc, None, "backbone data config")


def _normalise(dc: Mapping[str, Any], cfg: DataConfig | None, where: str) -> dict[str, Any]:
    missing = [k for k in DATA_CONFIG_KEYS if k not in dc and k not in ("crop_pct", "crop_mode")]
    if missing:
        raise UniTuneError(f"{where}: missing {', '.join(missing)} (expected keys {list(DATA_CONFIG_KEYS)})")
    size, mean, std = (_numbers(dc[k], f"{where}.{k}", kind) for k, kind in
                       (("input_size", int), ("mean", float), ("std", float)))
    if len(size) != 3 or min(size) < 1 or max(size) > MAX_INPUT_SIZE:
        raise UniTuneError(f"{where}.input_size: expected (channels, height, width) of sizes in "
                           f"[1, {MAX_INPUT_SIZE}], got {dc['input_size']!r}")
    if size[0] != 3:
        raise UniTuneError(f"{where}.input_size: the backbone takes {size[0]} channels; images are RGB (3)")
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise UniTuneError(f"{where}: expected 3 means and 3 positive stds, got mean={mean} std={std}")
    if dc["interpolation"] not in INTERPOLATIONS:
        raise UniTuneError(f"{where}.interpolation: expected one of {list(INTERPOLATIONS)}, "
                           f"got {dc['interpolation']!r}")
    crop_pct = dc.get("crop_pct")
    if crop_pct is not None and (isinstance(crop_pct, bool) or not isinstance(crop_pct, (int, float))
                                 or not 0 < crop_pct <= 1):
        raise UniTuneError(f"{where}.crop_pct: expected a number in (0, 1], got {crop_pct!r}")
    if dc.get("crop_mode") not in (None, *CROP_MODES):
        raise UniTuneError(f"{where}.crop_mode: expected one of {list(CROP_MODES)}, got {dc.get('crop_mode')!r}")
    out = {
        "input_size": size,
        "interpolation": str(dc["interpolation"]),
        "mean": mean,
        "std": std,
        "crop_pct": float(dc.get("crop_pct") or timm.data.DEFAULT_CROP_PCT),
        "crop_mode": str(dc.get("crop_mode") or "center"),
    }
    if cfg is not None and cfg.resize == "squash":
        out.update(crop_pct=1.0, crop_mode="squash")
    return out


def _numbers(values: Any, where: str, kind: type) -> tuple:
    """A list of finite numbers of ``kind`` (JSON gives lists, timm gives tuples), or a one-line error."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        raise UniTuneError(f"{where}: expected a list of numbers, got {values!r}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or \
                (kind is int and v != int(v)):
            raise UniTuneError(f"{where}: expected a list of {'integers' if kind is int else 'numbers'}, "
                               f"got {values!r}")
    return tuple(kind(v) for v in values)


def check_data_config(dc: Any, where: str) -> dict[str, Any]:
    """A data config read back from a file (an export's manifest): a one-line error if it would
    not build a transform."""
    if not isinstance(dc, Mapping):
        raise UniTuneError(f"{where}: expected a mapping with keys {list(DATA_CONFIG_KEYS)}, got {dc!r}")
    return _normalise(dc, None, where)


def build_transform(data_config: Mapping[str, Any], train: bool, cfg: DataConfig) -> Callable:
    """PIL RGB image -> normalised tensor of the backbone's input size; the one pipeline of every stage.

    ``data_config`` is :func:`resolve_data_config`'s dict (or the same dict read back from a
    checkpoint or export manifest); ``train`` adds augmentation only when ``cfg.augment`` asks.
    """
    dc = _normalise(data_config, cfg, "data config")
    common = dict(input_size=dc["input_size"], interpolation=dc["interpolation"], mean=dc["mean"], std=dc["std"])
    if train and cfg.augment == "randaugment":
        out = timm.data.create_transform(is_training=True, auto_augment=RANDAUGMENT, hflip=0.5, re_prob=0.0, **common)
    else:
        out = timm.data.create_transform(is_training=False, crop_pct=dc["crop_pct"], crop_mode=dc["crop_mode"],
                                         **common)
        if train and cfg.augment == "shift":
            out = T.Compose([_RandomShift(), T.RandomHorizontalFlip(), out])
    # What the images become, for the loader's one-line note (:func:`note_resize`).
    out.unitune_resize = (tuple(dc["input_size"][1:]), cfg.resize)
    return out


_NOTED: set = set()


def note_resize(dataset: Any) -> None:
    """One line on stderr when images read from disk are not the backbone's input size: they are
    resized (``data.resize``) to it, which a researcher bringing their own images should hear about
    once (per process and pair of sizes), not find out from the accuracy. Only the first image is
    looked at (its header, not its pixels); generated sources have the size their config gives."""
    target = getattr(getattr(dataset, "transform", None), "unitune_resize", None)
    path = _first_file(dataset)
    if target is None or path is None:
        return
    (height, width), mode = target
    try:
        with Image.open(path) as img:  # reads the header only
            size = img.size
    except (OSError, SyntaxError, ValueError):
        return  # the loader names an unreadable image when it gets to it
    key = (size, height, width, mode)
    if size == (width, height) or key in _NOTED:
        return
    _NOTED.add(key)
    print(f"unitune: note: images are resized to {width}x{height} px, the backbone's input size "
          f"({path} is {size[0]}x{size[1]}; data.resize: {mode})", file=sys.stderr, flush=True)


def _first_file(dataset: Any) -> Path | None:
    """The file of the first item of ``dataset`` (through subsets), or None when it is not read from disk."""
    from .datasets import FileDataset, SubsetDataset

    index = 0
    while isinstance(dataset, SubsetDataset):
        if not dataset.indices:
            return None
        index, dataset = dataset.indices[index], dataset.parent
    if isinstance(dataset, FileDataset) and index < len(dataset.samples):
        return dataset.samples[index][0]
    return None


class _RandomShift:
    """Translate by up to an eighth of the image's side: reflect-pad, then crop at random (the
    padding follows each image's own size, which may differ from the model's input size)."""

    def __call__(self, img):
        pad = max(1, min(img.size) // 8)
        return T.RandomCrop((img.size[1], img.size[0]), padding=pad, padding_mode="reflect")(img)
