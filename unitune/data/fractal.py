"""``fractal``: formula-driven images for broad pretraining without any natural image (FractalDB).

Kataoka et al. (2020) pretrain ViTs on images of random iterated function systems (IFS), one
class per system, and the features transfer to natural-image tasks; Nakashima et al. (2022) do
it for ViTs. Here each class is a random IFS of 2-4 contractive affine maps drawn from
``(seed, class)``; systems whose attractor fills too little or too much of the frame are redrawn
(FractalDB's filling-rate filter). Each image of a class is its attractor rendered by the chaos
game with an instance perturbation of one map (FractalDB's intra-class variation), a random
colour, flip, rotation, scale and offset, so colour and position never name the class.

Everything is a function of ``(seed, class, split, index)``: the same config yields the same
images on any machine, nothing is stored on disk, and images are rendered on first use only
(indexing a split costs nothing), then kept in memory for the next epoch.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from .datasets import ImageDataset

_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
_MAPS = (2, 3, 4)
_FILL = (0.08, 0.45)  # fraction of pixels the attractor covers at 32 px (FractalDB filters on it)


def _chaos_game(maps: np.ndarray, probs: np.ndarray, rng: np.random.Generator, chains: int = 256,
                steps: int = 24, burn: int = 6) -> np.ndarray:
    """Points on the attractor: many short chaos-game chains in parallel (each map contracts, so a
    chain forgets its start within a few steps)."""
    pts = rng.uniform(-1, 1, size=(chains, 2))
    out = []
    for t in range(steps):
        k = rng.choice(len(maps), size=chains, p=probs)
        a = maps[k]  # (chains, 2, 3): [A | b]
        pts = np.einsum("nij,nj->ni", a[:, :, :2], pts) + a[:, :, 2]
        if t >= burn:
            out.append(pts)
    return np.concatenate(out)


def _rasterise(pts: np.ndarray, size: int, rng: np.random.Generator | None) -> np.ndarray:
    """Point density in a ``size`` square (2x supersampled), the cloud fitted to the frame; with an
    ``rng``, a random rotation, scale and offset are applied first."""
    pts = pts - pts.mean(0)
    if rng is not None:
        theta = rng.uniform(0, 2 * np.pi)
        rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        if rng.random() < 0.5:
            rot = rot @ np.diag([-1.0, 1.0])
        pts = pts @ rot.T
    extent = np.abs(pts).max() + 1e-9
    scale = 0.45 * (rng.uniform(0.7, 1.0) if rng is not None else 1.0)
    shift = rng.uniform(-0.08, 0.08, size=2) if rng is not None else np.zeros(2)
    hi = 2 * size
    xy = ((pts / extent * scale + 0.5 + shift) * hi).astype(np.int64)
    keep = (xy >= 0).all(1) & (xy < hi).all(1)
    grid = np.zeros((hi, hi), np.float64)
    np.add.at(grid, (xy[keep, 1], xy[keep, 0]), 1.0)
    return grid.reshape(size, 2, size, 2).sum(axis=(1, 3))


def _random_system(rng: np.random.Generator) -> np.ndarray:
    n = int(rng.choice(_MAPS))
    maps = rng.uniform(-1, 1, size=(n, 2, 3))
    for a in maps:  # contractive: largest singular value below 1
        s = np.linalg.norm(a[:, :2], 2)
        if s >= 0.95:
            a[:, :2] *= rng.uniform(0.5, 0.95) / s
    return maps


def _probs(maps: np.ndarray) -> np.ndarray:
    det = np.abs(np.linalg.det(maps[:, :, :2])) + 1e-3  # FractalDB: p_i proportional to |det A_i|
    return det / det.sum()


@functools.lru_cache(maxsize=8)
def fractal_systems(seed: int, num_classes: int) -> tuple[np.ndarray, ...]:
    """One IFS per class, drawn from ``(seed, class)`` and redrawn until its attractor's filling
    rate lies in :data:`_FILL` (degenerate systems collapse to a line or a dot)."""
    systems = []
    for c in range(num_classes):
        rng = np.random.default_rng([seed, 0xF2AC, c])
        for _ in range(200):
            maps = _random_system(rng)
            grid = _rasterise(_chaos_game(maps, _probs(maps), rng), 32, None)
            if _FILL[0] <= (grid > 0).mean() <= _FILL[1]:
                break
        systems.append(maps)
    return tuple(systems)


class FractalDataset(ImageDataset):
    """``num_classes`` fractal classes; ``samples_per_class`` train images per class, a tenth of that
    (at least 2) per class in val and in test."""

    def __init__(self, num_classes: int, samples_per_class: int, image_size: int, seed: int, split: str):
        per_split = {"train": samples_per_class, "val": max(2, samples_per_class // 10)}
        per_split["test"] = per_split["val"]
        parts = ["train", "val"] if split == "trainval" else [split]
        self.items = [(_SPLIT_IDS[p], k) for p in parts for k in range(num_classes * per_split[p])]
        self.image_size, self.seed, self.num = image_size, seed, num_classes
        self._cache: dict[int, Image.Image] = {}
        super().__init__([f"ifs_{c}" for c in range(num_classes)], [k % num_classes for _, k in self.items],
                         f"fractal [{split}]")

    def load(self, index: int) -> Image.Image:
        img = self._cache.get(index)
        if img is None:
            img = self._cache[index] = self.render(index)
        return img

    def render(self, index: int) -> Image.Image:
        split_id, k = self.items[index]
        c = self.targets[index]
        rng = np.random.default_rng([self.seed, 0xF2AD, split_id, k])
        maps = fractal_systems(self.seed, self.num)[c].copy()
        maps[rng.integers(len(maps))] *= rng.uniform(0.85, 1.15)  # FractalDB's intra-class weight
        density = _rasterise(_chaos_game(maps, _probs(maps), rng), self.image_size, rng)
        v = np.log1p(density)
        v = v / (v.max() + 1e-9)
        colour = rng.uniform(0.35, 1.0, size=3)
        background = rng.uniform(0.0, 0.15, size=3)
        x = background + v[..., None] * (colour - background)
        return Image.fromarray(np.clip(np.round(x * 255), 0, 255).astype(np.uint8))


def fractal_dataset(num_classes: int, samples_per_class: int, image_size: int, seed: int, split: str) -> FractalDataset:
    return FractalDataset(num_classes, samples_per_class, image_size, seed, split)
