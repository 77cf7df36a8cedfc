"""``minivtab``: offline target tasks modelled on VTAB-1k (800 train / 200 val / 1,000 test each).

VTAB-1k's structured tasks are rendered scenes, so tasks of their kind can be generated; its
natural and specialized tasks are photographs and scans, so those come from real images that
ship inside installed packages (nothing is downloaded). Tasks, by VTAB group::

    natural      digits       real handwritten scans (scikit-learn's UCI digits) rendered SVHN-style:
                              one light digit filling most of a dark, faintly tinted, noisy canvas
                 textures     real photographs (scikit-learn's china and flower, matplotlib's Grace
                              Hopper): a crop of one of 7 regions (roof, trees, lake, petals, leaves,
                              flag, uniform); class = the region (DTD-like)
    specialized  terrain      real elevation model (matplotlib's Jacksboro fault DEM), hill-shaded
                              like a remote-sensing tile; class = local relief (4 bins)
    structured   count        CLEVR-count: 3-10 objects on a floor (8 classes)
                 location     dSprites-location: one sprite, class = x position (8 bins)
                 orientation  dSprites-orientation / smallNORB-azimuth: an asymmetric sprite, class =
                              its rotation (8 bins of 45 degrees)
                 distance     CLEVR-distance: objects on a ground plane in perspective, class = depth
                              of the nearest one (6 bins)

Splits never share a source image: the digits come from disjoint pools of scans (scikit-learn's
fixed 60/20/20 split of the 1,797 scans, so a test digit was never seen in training), the terrain
tiles from disjoint strips of rows of the map, the texture crops from disjoint cells of the photos. Generated tasks draw item ``k`` of split ``s`` from
``(data.seed, task, s, k)``; labels cycle through the classes, so every split is balanced.
Images are rendered on first use (indexing a split costs nothing) and kept for the next epoch.
``data.split_sizes: [train, val, test]`` shrinks a task (tests, ``--quick``); ``trainval`` is
train plus val, as VTAB's train800val200.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .datasets import ImageDataset

SPLIT_SIZES = (800, 200, 1000)  # VTAB-1k: train800, val200; the test set is at least 1,000
GROUPS = {"digits": "natural", "terrain": "specialized", "count": "structured", "location": "structured",
          "orientation": "structured", "distance": "structured", "textures": "natural"}
TASKS = tuple(GROUPS)
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
_SS = 4  # supersampling of the drawn scenes (anti-aliasing)


# --------------------------------------------------------------------------------- the dataset

class MiniVtabDataset(ImageDataset):
    def __init__(self, task: str, split: str, sizes: tuple[int, int, int], image_size: int, seed: int):
        self.task, self.image_size, self.seed = task, image_size, seed
        self.render_fn, classes = _TASKS[task]
        per = dict(zip(("train", "val", "test"), sizes))
        parts = ["train", "val"] if split == "trainval" else [split]
        self.items = [(p, k) for p in parts for k in range(per[p])]
        self._cache: dict[int, tuple[Image.Image, int]] = {}
        if task == "digits":  # the label is the scan's, known without rendering
            targets = [_digit_label(p, k) for p, k in self.items]
        else:
            targets = [k % len(classes) for _, k in self.items]
        super().__init__(classes, targets, f"minivtab {task} [{split}]")

    def load(self, index: int) -> Image.Image:
        img = self._cache.get(index)
        if img is None:
            split, k = self.items[index]
            rng = np.random.default_rng([self.seed, TASKS.index(self.task), _SPLIT_IDS[split], k])
            img = self._cache[index] = self.render_fn(rng, self.targets[index], self.image_size, split, k, self.seed)
        return img


def minivtab_dataset(task: str, split: str, sizes: tuple[int, int, int] | None, image_size: int | None,
                     seed: int) -> MiniVtabDataset:
    return MiniVtabDataset(task, split, tuple(sizes or SPLIT_SIZES), image_size or 32, seed)


# ------------------------------------------------------------------------------ drawing helpers

def _canvas(size: int, colour) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("RGB", (size * _SS, size * _SS), tuple(int(c) for c in colour))
    return img, ImageDraw.Draw(img)


def _finish(img: Image.Image, size: int, rng: np.random.Generator, noise: float = 4.0) -> Image.Image:
    small = np.asarray(img.resize((size, size), Image.LANCZOS), dtype=np.float64)
    small = small + rng.normal(0, noise, size=small.shape)
    return Image.fromarray(np.clip(np.round(small), 0, 255).astype(np.uint8))


def _shape(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float, angle: float, fill) -> None:
    """A filled square, circle, triangle or arrow of radius ``r`` around (cx, cy), rotated by ``angle``."""
    fill = tuple(int(c) for c in fill)
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        return
    if kind == "ellipse":
        pts = [(1.0 * math.cos(t), 0.55 * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 24, endpoint=False)]
    elif kind == "square":
        pts = [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]
    elif kind == "triangle":
        pts = [(0.0, -1.0), (0.87, 0.5), (-0.87, 0.5)]
    elif kind == "arrow":  # one axis of symmetry only: its rotation is defined over a full turn
        pts = [(0.0, -1.0), (0.7, -0.1), (0.25, -0.1), (0.25, 0.9), (-0.25, 0.9), (-0.25, -0.1), (-0.7, -0.1)]
    else:
        raise AssertionError(kind)
    c, s = math.cos(angle), math.sin(angle)
    draw.polygon([(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts], fill=fill)


_COLOURS = np.array([[173, 35, 35], [42, 75, 215], [29, 105, 20], [129, 38, 192], [129, 74, 25],
                     [41, 208, 208], [255, 238, 51], [87, 87, 87]], dtype=np.float64)  # CLEVR's palette


# ---------------------------------------------------------------------------------- structured

def _count(rng, label, size, split, k, seed):
    """CLEVR-count: label + 3 objects (3-10) of CLEVR's colours and shapes on a lit grey floor."""
    n = label + 3
    s = size * _SS
    top, bottom = rng.uniform(90, 130), rng.uniform(150, 200)
    img, draw = _canvas(size, (top,) * 3)
    for y in range(s):  # a floor lit from above: a vertical gradient
        v = top + (bottom - top) * y / s
        draw.line([(0, y), (s, y)], fill=(int(v),) * 3)
    placed: list[tuple[float, float, float]] = []
    for _ in range(n):
        for _try in range(60):
            r = rng.uniform(0.055, 0.085) * s
            x, y = rng.uniform(r, s - r, size=2)
            if all((x - a) ** 2 + (y - b) ** 2 > (r + c + 0.01 * s) ** 2 for a, b, c in placed):
                break
        placed.append((x, y, r))
        colour = _COLOURS[rng.integers(len(_COLOURS))] * rng.uniform(0.8, 1.1)
        _shape(draw, str(rng.choice(["circle", "square", "triangle"])), x, y, r, rng.uniform(0, 2 * math.pi),
               np.clip(colour, 0, 255))
    return _finish(img, size, rng)


def _sprite(rng, size, kind, x, y, angle):
    s = size * _SS
    img, draw = _canvas(size, (0, 0, 0))
    _shape(draw, kind, x * s, y * s, rng.uniform(0.09, 0.15) * s, angle, (255, 255, 255))
    return _finish(img, size, rng, noise=2.0)


def _location(rng, label, size, split, k, seed):
    """dSprites-location: a white sprite on black; the class is its x position (8 bins)."""
    lo, hi = 0.15, 0.85
    width = (hi - lo) / 8
    x = lo + width * (label + rng.uniform(0.05, 0.95))
    kind = str(rng.choice(["square", "ellipse", "triangle"]))
    return _sprite(rng, size, kind, x, rng.uniform(0.15, 0.85), rng.uniform(0, 2 * math.pi))


def _orientation(rng, label, size, split, k, seed):
    """dSprites-orientation / smallNORB-azimuth: an arrow's rotation in 8 bins of 45 degrees."""
    angle = (label + rng.uniform(0.1, 0.9)) * (2 * math.pi / 8)
    return _sprite(rng, size, "arrow", rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), angle)


_DEPTHS = (1.0, 1.4, 1.9, 2.6, 3.5, 4.7, 6.5)  # CLEVR-distance: 6 bins of the nearest object's depth


def _distance(rng, label, size, split, k, seed):
    """CLEVR-distance: 2-5 objects on a ground plane seen in perspective; class = bin of the
    nearest object's depth (its screen height and size both shrink with 1/depth)."""
    s = size * _SS
    horizon = rng.uniform(0.22, 0.32) * s
    sky = rng.uniform(60, 110)
    img, draw = _canvas(size, (sky, sky, sky + 20))
    for y in range(int(horizon), s):
        v = 100 + 80 * (y - horizon) / (s - horizon)
        draw.line([(0, y), (s, y)], fill=(int(v), int(v), int(v * 0.9)))
    nearest = rng.uniform(_DEPTHS[label], _DEPTHS[label + 1])
    depths = [nearest] + list(rng.uniform(nearest, _DEPTHS[-1] * 1.3, size=int(rng.integers(1, 5))))
    focal = s - horizon  # depth 1 sits on the bottom edge
    for z in sorted(depths, reverse=True):  # far to near: the near ones are drawn over
        r = 0.18 * s * rng.uniform(0.85, 1.15) / z
        base = horizon + focal / z
        colour = _COLOURS[rng.integers(len(_COLOURS))]
        _shape(draw, str(rng.choice(["circle", "square"])), rng.uniform(0.1, 0.9) * s, base - r, r, 0.0, colour)
    return _finish(img, size, rng)


# -------------------------------------------------------------------------- natural: real digits

@functools.lru_cache(maxsize=1)
def _digit_pools() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    from .generated import _digits, digits_split_indices

    images, targets = _digits()
    return images, targets, digits_split_indices()


def _digit_index(split: str, k: int) -> int:
    """The scan behind item ``k`` of ``split``: its pool cycled in a fixed shuffled order."""
    _, _, pools = _digit_pools()
    pool = pools[split]
    order = np.random.default_rng([0xD1, _SPLIT_IDS[split], k // len(pool)]).permutation(len(pool))
    return int(pool[order[k % len(pool)]])


def _digit_label(split: str, k: int) -> int:
    _, targets, _ = _digit_pools()
    return int(targets[_digit_index(split, k)])


def _digits(rng, label, size, split, k, seed):
    """A real scan, scaled up to most of the frame, light and faintly tinted on a dark, shaded,
    slightly noisy canvas. Simpler than SVHN on purpose: at 32 px and 1,000 images an 8x8 scan
    between two cut-off neighbours in random colours and either polarity stayed at chance for
    every method, full fine-tuning from the pretrained backbone included; strong colours with one
    polarity still reached only 24% (benchmarks/RESULTS.md, mini VTAB)."""
    images, _, _ = _digit_pools()
    s = size * _SS
    # light ink on a dark ground, faintly tinted: one polarity, little colour (see the docstring)
    bg = rng.uniform(0, 50) * rng.uniform(0.8, 1.0, size=3)
    fg = rng.uniform(170, 255) * rng.uniform(0.8, 1.0, size=3)
    canvas = np.ones((s, s, 3)) * bg + np.linspace(-1, 1, s)[:, None, None] * rng.uniform(-10, 10, size=3)
    h = int(rng.uniform(0.7, 0.85) * s)
    w = int(h * rng.uniform(0.7, 0.85))
    cx, cy = s / 2 + rng.uniform(-0.06, 0.06) * s, s / 2 + rng.uniform(-0.06, 0.06) * s
    glyph = Image.fromarray(images[_digit_index(split, k)]).resize((w, h), Image.BICUBIC)
    alpha = np.clip(np.asarray(glyph, dtype=np.float64)[..., None] / 255.0, 0, 1)
    x0, y0 = int(cx - w / 2), int(cy - h / 2)
    canvas[y0:y0 + h, x0:x0 + w] = canvas[y0:y0 + h, x0:x0 + w] * (1 - alpha) + fg * alpha
    img = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    return _finish(img, size, rng, noise=4.0)


# ----------------------------------------------------------------------- specialized: real terrain

_TILE = 40  # DEM cells per tile before resizing (the map is 344 x 403 cells of about 90 m)
_STRIPS = {"train": (0.0, 0.55), "val": (0.55, 0.7), "test": (0.7, 1.0)}  # rows of the map per split


@functools.lru_cache(maxsize=1)
def _dem() -> tuple[np.ndarray, dict[str, list[np.ndarray]]]:
    """The elevation map and, per split, the origins of its tiles in each relief class. A tile lies
    wholly inside its split's strip of rows; the classes are the quartiles of relief (max - min)
    over all tiles of the map, so a class means the same in every split."""
    import matplotlib
    from numpy.lib.stride_tricks import sliding_window_view

    path = Path(matplotlib.get_data_path()) / "sample_data" / "jacksboro_fault_dem.npz"
    with np.load(path, allow_pickle=False) as f:
        dem = f["elevation"].astype(np.float64)
    windows = sliding_window_view(dem, (_TILE, _TILE))[::2, ::2]
    relief = windows.max(axis=(-1, -2)) - windows.min(axis=(-1, -2))
    labels = np.searchsorted(np.quantile(relief, [0.25, 0.5, 0.75]), relief)
    ys, xs = np.meshgrid(np.arange(relief.shape[0]) * 2, np.arange(relief.shape[1]) * 2, indexing="ij")
    tiles = {}
    for split, (lo, hi) in _STRIPS.items():
        inside = (ys >= lo * dem.shape[0]) & (ys + _TILE <= hi * dem.shape[0])
        tiles[split] = [np.stack([ys[inside & (labels == c)], xs[inside & (labels == c)]], 1) for c in range(4)]
    return dem, tiles


def _terrain(rng, label, size, split, k, seed):
    """A hill-shaded tile (sun from a random azimuth), randomly rotated and flipped: the class is
    its relief, read from shading and texture rather than from absolute height."""
    from matplotlib.colors import LightSource

    dem, tiles = _dem()
    candidates = tiles[split][label]
    y0, x0 = candidates[rng.integers(len(candidates))]
    tile = dem[y0:y0 + _TILE, x0:x0 + _TILE]
    shade = LightSource(azdeg=rng.uniform(0, 360), altdeg=rng.uniform(35, 60)).hillshade(tile, vert_exag=0.05, dx=1, dy=1)
    tile = np.rot90(shade, int(rng.integers(4)))
    if rng.random() < 0.5:
        tile = tile[:, ::-1]
    tint = rng.uniform(0.8, 1.0, size=3)
    rgb = np.clip(tile[..., None] * tint * 255, 0, 255).astype(np.uint8)
    return _finish(Image.fromarray(rgb).resize((size * _SS, size * _SS), Image.BILINEAR), size, rng, noise=3.0)


# ------------------------------------------------------------------ natural: crops of real photos

# Regions of the photos that ship with scikit-learn and matplotlib, as (photo, x0, y0, x1, y1) in
# fractions of its width and height; one class each. Each region is tiled into _CELL x _CELL
# pixel cells, and every cell belongs to one split (a fixed shuffle, 60/20/20 per class, the same
# for every run seed), so a test crop shares no pixel with any training crop.
_REGIONS = {
    "roof": ("china.jpg", 0.13, 0.12, 0.53, 0.88),
    "trees": ("china.jpg", 0.57, 0.68, 1.0, 1.0),
    "lake": ("china.jpg", 0.56, 0.05, 0.85, 0.60),
    "petals": ("flower.jpg", 0.30, 0.25, 0.68, 0.80),
    "leaves": ("flower.jpg", 0.0, 0.0, 0.25, 1.0),
    "flag": ("grace_hopper.jpg", 0.0, 0.0, 0.15, 0.55),
    "uniform": ("grace_hopper.jpg", 0.10, 0.72, 1.0, 1.0),
}
_CELL = 40
_CELL_SPLIT_SEED = 0


@functools.lru_cache(maxsize=1)
def _photo_cells() -> tuple[dict[str, np.ndarray], dict[str, list[list[tuple[str, int, int]]]]]:
    """The photos as arrays and, per split and class, the cells (photo, top, left) it draws from."""
    import matplotlib.cbook
    from sklearn.datasets import load_sample_images

    sample = load_sample_images()
    photos = {Path(f).name: img for f, img in zip(sample.filenames, sample.images)}
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        photos["grace_hopper.jpg"] = np.asarray(Image.open(f).convert("RGB"))
    rng = np.random.default_rng(_CELL_SPLIT_SEED)
    cells: dict[str, list[list[tuple[str, int, int]]]] = {"train": [], "val": [], "test": []}
    for photo, fx0, fy0, fx1, fy1 in _REGIONS.values():
        h, w = photos[photo].shape[:2]
        x0, y0, x1, y1 = round(fx0 * w), round(fy0 * h), round(fx1 * w), round(fy1 * h)
        grid = [(photo, y, x) for y in range(y0, y1 - _CELL + 1, _CELL) for x in range(x0, x1 - _CELL + 1, _CELL)]
        order = rng.permutation(len(grid))
        n_val = n_test = max(1, round(0.2 * len(grid)))
        parts = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
        for split, idx in parts.items():
            cells[split].append([grid[i] for i in idx])
    return photos, cells


def _textures(rng, label, size, split, k, seed):
    """A square crop (60-100% of a cell's side) from a cell of the class's region, maybe mirrored,
    its brightness jittered by up to 10%, resized to ``size``."""
    photos, cells = _photo_cells()
    photo, top, left = cells[split][label][rng.integers(len(cells[split][label]))]
    side = int(rng.integers(round(0.6 * _CELL), _CELL + 1))
    y, x = top + int(rng.integers(_CELL - side + 1)), left + int(rng.integers(_CELL - side + 1))
    crop = photos[photo][y:y + side, x:x + side].astype(np.float64) * rng.uniform(0.9, 1.1)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    img = Image.fromarray(np.clip(np.round(crop), 0, 255).astype(np.uint8))
    return img.resize((size, size), Image.BICUBIC)


_TASKS = {
    "digits": (_digits, [str(i) for i in range(10)]),
    "terrain": (_terrain, ["flat", "gentle", "hilly", "steep"]),
    "count": (_count, [str(n) for n in range(3, 11)]),
    "location": (_location, [f"x{i}" for i in range(8)]),
    "orientation": (_orientation, [f"{45 * i}deg" for i in range(8)]),
    "distance": (_distance, [f"d{i}" for i in range(6)]),
    "textures": (_textures, list(_REGIONS)),
}
