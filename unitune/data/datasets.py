"""The dataset classes every source returns: ``(image tensor, label)`` pairs with class names.

A dataset separates *loading* an image (``load(i)`` -> PIL RGB image, the source's business) from
*transforming* it (``transform``, set by the caller from :func:`unitune.data.build_transform`), so
every stage applies one and the same preprocessing to whatever source it reads.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.functional import to_tensor

from unitune.checks import check_input_file
from unitune.errors import UniTuneError


class DataError(UniTuneError):
    """A data problem (missing or unreadable image, bad list line): one line, like every UniTuneError.

    An exception raised inside a DataLoader worker comes back to the main process as
    ``type(e)("Caught ... in DataLoader worker process 0.\\nOriginal Traceback ...\\n<cls>: <msg>")``;
    this class recovers the original one-line message, so the CLI still prints a single line.
    """

    def __init__(self, message: str):
        if "\nOriginal Traceback" in message:
            last = message.rstrip().splitlines()[-1]
            message = last.split(": ", 1)[1] if ": " in last else last
        super().__init__(message)


# Everything PIL raises on a file it cannot decode: unknown format (UnidentifiedImageError is an
# OSError), truncated data (OSError), a corrupt PNG chunk (SyntaxError), absurd sizes.
# A DecompressionBombWarning (between 1x and 2x PIL's pixel limit) is raised as an error too: a
# warning printed before the error line (or before a run that then needs gigabytes) is no better.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning)


def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode ``path`` into an RGB image (grayscale, palette and CMYK are converted), or a one-line error.

    The file's kind is checked from its ``stat`` first: opening a FIFO named ``x.png`` blocks forever."""
    check_input_file(path, "image", error=DataError)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with open(path, "rb") as f:
                img = Image.open(f)
                return img.convert("RGB")  # convert() decodes the whole file while it is open
    except FileNotFoundError:
        raise DataError(f"{path}: image not found") from None
    except _DECODE_ERRORS as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{path}: unreadable image ({reason})") from None


def verify_image(path: str | os.PathLike) -> None:
    """Check ``path`` is an image PIL can read, without decoding its pixels: the header is parsed
    and PIL's ``verify`` walks the file's structure (a PNG's chunks and checksums). Milliseconds
    a file, so a split can be checked before training rather than found broken after it."""
    check_input_file(path, "image", error=DataError)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with open(path, "rb") as f:
                Image.open(f).verify()
    except FileNotFoundError:
        raise DataError(f"{path}: image not found") from None
    except _DECODE_ERRORS as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{path}: unreadable image ({reason})") from None


class ImageDataset(Dataset):
    """Base class: ``classes`` (names), ``targets`` (one label per item), ``load(i)``, ``transform``."""

    def __init__(self, classes: Sequence[str], targets: Sequence[int], name: str,
                 transform: Callable | None = None):
        self.classes = list(classes)
        self.targets = [int(t) for t in targets]
        self.name = name
        self.transform = transform

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.targets)

    def load(self, index: int) -> Image.Image:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = self.load(index)
        x = self.transform(img) if self.transform is not None else to_tensor(img)
        return x, self.targets[index]

    def subset(self, indices: Sequence[int], classes: Sequence[str] | None = None,
               label_map: dict[int, int] | None = None, name: str | None = None) -> "SubsetDataset":
        """A view on some items, optionally with new class names and labels (``label_map[old] = new``)."""
        return SubsetDataset(self, indices, classes, label_map, name)

    def check_images(self) -> None:
        """Decode every image once; the first unreadable one raises a DataError naming it."""
        for i in range(len(self)):
            self.load(i)

    def file(self, index: int) -> Path | None:
        """The image file of item ``index``; None for images made in memory."""
        return None

    def verify_files(self) -> None:
        """:func:`verify_image` on every item's file (nothing for images made in memory)."""
        for i in range(len(self)):
            path = self.file(i)
            if path is None:
                return
            verify_image(path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self)} images, {self.num_classes} classes)"


class FileDataset(ImageDataset):
    """Images on disk: ``samples`` is a list of ``(path, label)``."""

    def __init__(self, samples: Sequence[tuple[str | os.PathLike, int]], classes: Sequence[str], name: str,
                 transform: Callable | None = None):
        self.samples = [(Path(p), int(t)) for p, t in samples]
        super().__init__(classes, [t for _, t in self.samples], name, transform)

    def load(self, index: int) -> Image.Image:
        return load_image(self.samples[index][0])

    def file(self, index: int) -> Path | None:
        return self.samples[index][0]


class ArrayDataset(ImageDataset):
    """Images in memory: a uint8 array ``[N, H, W]`` (grayscale) or ``[N, H, W, 3]`` (RGB)."""

    def __init__(self, images: np.ndarray, targets: Sequence[int], classes: Sequence[str], name: str,
                 transform: Callable | None = None):
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise ValueError(f"expected uint8 [N,H,W] or [N,H,W,3] images, got {images.dtype} {images.shape}")
        self.images = images
        super().__init__(classes, targets, name, transform)

    def load(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index]).convert("RGB")


class SubsetDataset(ImageDataset):
    """Some items of a parent dataset (a class subset, a fixed val subset), relabelled if asked."""

    def __init__(self, parent: ImageDataset, indices: Sequence[int], classes: Sequence[str] | None = None,
                 label_map: dict[int, int] | None = None, name: str | None = None):
        self.parent = parent
        self.indices = [int(i) for i in indices]
        targets = [parent.targets[i] for i in self.indices]
        if label_map is not None:
            targets = [label_map[t] for t in targets]
        super().__init__(parent.classes if classes is None else classes, targets,
                         name or parent.name, parent.transform)

    def load(self, index: int) -> Image.Image:
        return self.parent.load(self.indices[index])

    def file(self, index: int) -> Path | None:
        return self.parent.file(self.indices[index])


class JoinedDataset(ImageDataset):
    """Several datasets of the same classes, one after the other (train and val pooled for the
    tuner's repeated splits or folds: :func:`unitune.data.split.repeated_splits`, :func:`~unitune.data.split.fold_splits`)."""

    def __init__(self, parts: Sequence[ImageDataset], name: str | None = None):
        if not parts or any(p.classes != parts[0].classes for p in parts):
            raise ValueError("JoinedDataset: expected one or more datasets with the same classes")
        self.parts = list(parts)
        self.offsets = np.cumsum([0, *(len(p) for p in parts)]).tolist()
        super().__init__(parts[0].classes, [t for p in parts for t in p.targets],
                         name or "+".join(p.name for p in parts), parts[0].transform)

    def _locate(self, index: int) -> tuple[ImageDataset, int]:
        k = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.parts[k], index - self.offsets[k]

    def load(self, index: int) -> Image.Image:
        part, i = self._locate(index)
        return part.load(i)

    def file(self, index: int) -> Path | None:
        part, i = self._locate(index)
        return part.file(i)
