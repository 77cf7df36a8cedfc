"""Sources that need no files: the real ``digits`` images that ship with scikit-learn, and a
``synthetic`` set for tests.

``digits`` is scikit-learn's copy of the UCI handwritten digits: 1,797 real 8x8 grayscale images
of 0-9, about 180 per class, offline. Each class is split once, deterministically (a fixed seed,
independent of the run's seeds, so the test images never change): 60% train, 20% val, 20% test
(1,078 / 359 / 360 images). ``trainval`` is train plus val. Images become 3-channel PIL images,
so the backbone's timm transform (resize to the input size, normalise) applies as to any photo.

``synthetic`` draws one fixed random 4x4 colour pattern per class and renders each image as that
pattern, upsampled to ``image_size``, plus per-image brightness jitter and pixel noise: learnable,
deterministic in ``seed``, any size, nothing on disk. Every split has ``samples_per_class`` images
per class, with its own noise.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from .datasets import ArrayDataset, ImageDataset

DIGITS_FRACTIONS = (0.6, 0.2, 0.2)  # train, val, test per class
_DIGITS_SPLIT_SEED = 0
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)  # pixel values are 0..16
    return images, d.target.astype(np.int64)


@functools.lru_cache(maxsize=1)
def digits_split_indices() -> dict[str, np.ndarray]:
    """Indices into ``load_digits()`` of each split: stratified per class, fixed forever."""
    _, targets = _digits()
    rng = np.random.default_rng(_DIGITS_SPLIT_SEED)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(targets == c))
        n_train = round(DIGITS_FRACTIONS[0] * len(idx))
        n_val = round(DIGITS_FRACTIONS[1] * len(idx))
        parts["train"].append(idx[:n_train])
        parts["val"].append(idx[n_train:n_train + n_val])
        parts["test"].append(idx[n_train + n_val:])
    return {s: np.sort(np.concatenate(p)) for s, p in parts.items()}


def digits_dataset(split: str) -> ArrayDataset:
    images, targets = _digits()
    split_idx = digits_split_indices()
    if split == "trainval":
        idx = np.sort(np.concatenate([split_idx["train"], split_idx["val"]]))
    else:
        idx = split_idx[split]
    return ArrayDataset(images[idx], targets[idx].tolist(), [str(c) for c in range(10)], f"digits [{split}]")


class SyntheticDataset(ImageDataset):
    """Generated images: item ``k`` of split ``s`` is rendered on demand from ``(seed, s, k)``."""

    def __init__(self, num_classes: int, samples_per_class: int, image_size: int, seed: int, split: str):
        parts = ["train", "val"] if split == "trainval" else [split]
        # (split id, index within that split) per item; label = index % num_classes
        self.items = [(_SPLIT_IDS[p], k) for p in parts for k in range(num_classes * samples_per_class)]
        self.image_size = image_size
        self.seed = seed
        rng = np.random.default_rng([seed, 0xC1A55])
        self.templates = rng.uniform(0.0, 1.0, size=(num_classes, 4, 4, 3))
        super().__init__([f"class_{c}" for c in range(num_classes)], [k % num_classes for _, k in self.items],
                         f"synthetic [{split}]")

    def load(self, index: int) -> Image.Image:
        split_id, k = self.items[index]
        rng = np.random.default_rng([self.seed, split_id, k])
        pattern = (self.templates[self.targets[index]] * 255).astype(np.uint8)
        base = Image.fromarray(pattern).resize((self.image_size, self.image_size), Image.NEAREST)
        x = np.asarray(base, dtype=np.float64) / 255.0
        x = 0.2 + 0.6 * x + rng.normal(0.0, 0.1) + rng.normal(0.0, 0.15, size=x.shape)
        return Image.fromarray(np.clip(np.round(x * 255), 0, 255).astype(np.uint8))


def synthetic_dataset(num_classes: int, samples_per_class: int, image_size: int, seed: int,
                      split: str) -> SyntheticDataset:
    return SyntheticDataset(num_classes, samples_per_class, image_size, seed, split)
