"""The ``data:`` section of a run config.

::

    data:
      source: vtab              # imagefolder | vtab | fewshot | digits | synthetic | fractal | minivtab
      root: data/vtab-1k        # folder of the data set (imagefolder, vtab, fewshot)
      task: cifar               # VTAB-1k task folder under root (vtab)
      batch_size: 64            # global batch size (split over ranks under torchrun)
      num_workers: 4
      resize: squash            # squash: straight to the input size (VTAB) | crop: timm's resize + center crop
      augment: none             # none | randaugment (few-shot recipes) | shift (pad-crop + flip: small images)
      val_subset: 200           # use a fixed subset of this many val images (fast search fitness)

Few-shot lists follow NOAH's naming by default (``{shots}`` and ``{seed}`` are filled in)::

      source: fewshot
      root: data/few-shot/fgvc-aircraft
      shots: 4
      seed: 0
      train_list: annotations/train_meta.list.num_shot_{shots}.seed_{seed}   # the default
      val_list: annotations/val_meta.list                                     # the default
      test_list: annotations/test_meta.list                                   # the default
      trainval_list: null       # default: the train list (retraining keeps the k-shot regime)

Every check that can be made without touching the data happens here, so a typo fails before
anything is loaded or written.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from unitune.checks import check_seed
from unitune.errors import UniTuneError

SOURCES = ("imagefolder", "vtab", "fewshot", "digits", "synthetic", "fractal", "minivtab")
RESIZE_MODES = ("squash", "crop")
AUGMENTS = ("none", "randaugment", "shift")
SPLITS = ("train", "val", "trainval", "test")

FEWSHOT_LISTS = {
    "train_list": "annotations/train_meta.list.num_shot_{shots}.seed_{seed}",
    "val_list": "annotations/val_meta.list",
    "trainval_list": None,  # None: the train list
    "test_list": "annotations/test_meta.list",
}

# Keys that only mean something for some sources; setting one for another source is a mistake
# worth reporting (a `task:` on an imagefolder run is a config copied from elsewhere).
_ONLY_FOR = {
    "root": ("imagefolder", "vtab", "fewshot"),
    "task": ("vtab", "minivtab"),
    "shots": ("fewshot",),
    "train_list": ("fewshot",),
    "val_list": ("fewshot",),
    "trainval_list": ("fewshot",),
    "test_list": ("fewshot",),
    "num_classes": ("vtab", "fewshot", "synthetic", "fractal"),
    "samples_per_class": ("synthetic", "fractal"),
    "image_size": ("synthetic", "fractal", "minivtab"),
    "split_sizes": ("minivtab",),
}


@dataclass(frozen=True)
class DataConfig:
    source: str
    root: str | None = None
    task: str | None = None
    shots: int | None = None
    # The data seed: fills `{seed}` in few-shot list names, picks the val_subset images and
    # generates the synthetic set (the digits split is fixed, so its test set never changes).
    # Loader shuffling has its own seed (the run's), passed to `build_loader`.
    seed: int = 0
    train_list: str | None = None
    val_list: str | None = None
    trainval_list: str | None = None
    test_list: str | None = None
    # Original class indices to keep, in this order; they become labels 0..K-1.
    classes: tuple[int, ...] | None = None
    # vtab / fewshot: the class count when there is no classes.txt (else inferred from the lists);
    # synthetic: how many classes to generate.
    num_classes: int | None = None
    samples_per_class: int | None = None  # synthetic; default 20
    image_size: int | None = None  # synthetic, fractal, minivtab; default 32
    split_sizes: tuple[int, ...] | None = None  # minivtab: [train, val, test] images; default 800, 200, 1000
    batch_size: int = 64
    eval_batch_size: int | None = None
    num_workers: int = 4
    resize: str = "squash"
    augment: str = "none"
    val_subset: int | None = None
    # Decode every image once before training (slow on big sets; corrupt files fail on load anyway).
    check_images: bool = False
    where: str = field(default="data", compare=False, repr=False)

    def __post_init__(self):
        w = self.where
        if self.source not in SOURCES:
            raise UniTuneError(f"{w}.source: expected one of {list(SOURCES)}, got {self.source!r}")
        for key, kind in (
            ("root", str), ("task", str), ("train_list", str), ("val_list", str),
            ("trainval_list", str), ("test_list", str), ("resize", str), ("augment", str),
        ):
            value = getattr(self, key)
            if value is not None and not isinstance(value, kind):
                raise UniTuneError(f"{w}.{key}: expected a string, got {value!r}")
        minimum = {"shots": 1, "seed": 0, "num_classes": 1, "samples_per_class": 1, "image_size": 1,
                   "batch_size": 1, "eval_batch_size": 1, "num_workers": 0, "val_subset": 1}
        for key, low in minimum.items():
            value = getattr(self, key)
            if value is None and key not in ("seed", "batch_size", "num_workers"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UniTuneError(f"{w}.{key}: expected an integer >= {low}, got {value!r}")
        check_seed(self.seed, f"{w}.seed")
        if not isinstance(self.check_images, bool):
            raise UniTuneError(f"{w}.check_images: expected true or false, got {self.check_images!r}")
        if self.resize not in RESIZE_MODES:
            raise UniTuneError(f"{w}.resize: expected one of {list(RESIZE_MODES)}, got {self.resize!r}")
        if self.augment not in AUGMENTS:
            raise UniTuneError(f"{w}.augment: expected one of {list(AUGMENTS)}, got {self.augment!r}")
        if self.classes is not None:
            c = self.classes
            if isinstance(c, (str, bytes)) or not isinstance(c, (list, tuple)) or not c:
                raise UniTuneError(f"{w}.classes: expected a non-empty list of class indices, got {c!r}")
            for i in c:
                if isinstance(i, bool) or not isinstance(i, int) or i < 0:
                    raise UniTuneError(f"{w}.classes: class indices are integers >= 0, got {i!r}")
            if len(set(c)) != len(c):
                raise UniTuneError(f"{w}.classes: duplicate class in {list(c)}")
            if self.source == "digits" and max(c) > 9:
                raise UniTuneError(f"{w}.classes: digits has classes 0..9, got {max(c)}")
            if self.source == "synthetic" and self.num_classes is not None and max(c) >= self.num_classes:
                raise UniTuneError(f"{w}.classes: class {max(c)} >= num_classes {self.num_classes}")
            object.__setattr__(self, "classes", tuple(c))
        if self.source in ("imagefolder", "vtab", "fewshot") and not self.root:
            raise UniTuneError(f"{w}.root: source {self.source!r} needs the data folder")
        if self.source == "vtab" and not self.task:
            raise UniTuneError(f"{w}.task: source 'vtab' needs the VTAB-1k task (a folder under root), e.g. 'cifar'")
        if self.source == "fewshot":
            for key in FEWSHOT_LISTS:
                template = self.list_template(key)
                if template is None:
                    continue
                if "{shots}" in template and self.shots is None:
                    raise UniTuneError(f"{w}.shots: needed to fill {{shots}} in {key} {template!r}")
                try:
                    template.format(shots=self.shots, seed=self.seed)
                except (KeyError, IndexError, ValueError) as e:
                    raise UniTuneError(
                        f"{w}.{key}: {template!r} may only use the placeholders {{shots}} and {{seed}} ({e})"
                    ) from None
        if self.split_sizes is not None:
            z = self.split_sizes
            if (isinstance(z, (str, bytes)) or not isinstance(z, (list, tuple)) or len(z) != 3
                    or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in z)):
                raise UniTuneError(f"{w}.split_sizes: expected three integers >= 1 [train, val, test], got {z!r}")
            object.__setattr__(self, "split_sizes", tuple(z))
        if self.source == "minivtab":
            from .minivtab import TASKS

            if self.task not in TASKS:
                raise UniTuneError(f"{w}.task: source 'minivtab' has the tasks {list(TASKS)}, got {self.task!r}")
        if self.source in ("synthetic", "fractal"):
            for key, default in (("num_classes", 10), ("samples_per_class", 20), ("image_size", 32)):
                if getattr(self, key) is None:
                    object.__setattr__(self, key, default)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, source: str = "data") -> "DataConfig":
        """Build from the parsed YAML mapping; ``source`` names it in errors ("cfg.yaml: data")."""
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise UniTuneError(f"{source}: expected a mapping of data settings, got {type(data).__name__}")
        known = [f.name for f in fields(cls) if f.name != "where"]
        for key in data:
            if key not in known:
                raise UniTuneError(f"{source}.{key}: unknown key, expected one of {sorted(known)}")
        if "source" not in data:
            raise UniTuneError(f"{source}.source: missing, expected one of {list(SOURCES)}")
        kind = data["source"]
        for key, sources in _ONLY_FOR.items():
            if data.get(key) is not None and kind in SOURCES and kind not in sources:
                raise UniTuneError(f"{source}.{key}: only used by source {' / '.join(sources)}, not {kind!r}")
        return cls(**dict(data), where=source)

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON-able values (for the resolved config saved with checkpoints)."""
        out = asdict(self)
        out.pop("where")
        if self.classes is not None:
            out["classes"] = list(self.classes)
        if self.split_sizes is not None:
            out["split_sizes"] = list(self.split_sizes)
        return out

    def list_template(self, key: str) -> str | None:
        """The few-shot list file name for ``key`` (``train_list`` ...) before placeholders are filled."""
        value = getattr(self, key)
        return FEWSHOT_LISTS[key] if value is None else value

    def list_path(self, key: str) -> str | None:
        """The few-shot list file for ``key``, relative to root, with ``{shots}``/``{seed}`` filled."""
        template = self.list_template(key)
        if template is None:
            return None
        return template.format(shots=self.shots, seed=self.seed)

    @property
    def eval_batch(self) -> int:
        return self.eval_batch_size or self.batch_size

