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

An ImageFolder without a ``val/`` folder (``train/`` + ``test/``) holds val out of ``train/``::

      source: imagefolder
      root: data/my-images
      val_fraction: 0.2         # per class, drawn with data.seed (see unitune/data/split.py)
      allow_missing_classes: false  # true: val/ or test/ may lack some of train/'s classes

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

from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Mapping

from unitune.errors import UniTuneError
from unitune.io import check_plain_name
from unitune.schema import check_fields, choice, count, flag, num, rule_only, seed_field, text

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
    "val_fraction": ("imagefolder",),
    "allow_missing_classes": ("imagefolder",),
}


def _root_given(c: "DataConfig", w: str) -> None:
    if c.source in ("imagefolder", "vtab", "fewshot") and not c.root:
        raise UniTuneError(f"{w}.root: source {c.source!r} needs the data folder")


def _task_known(c: "DataConfig", w: str) -> None:
    if c.task is not None:  # a folder under root, and under a comparison's run folder: never a path
        check_plain_name(c.task, f"{w}.task")
    if c.source == "vtab" and not c.task:
        raise UniTuneError(f"{w}.task: source 'vtab' needs the VTAB-1k task (a folder under root), e.g. 'cifar'")
    if c.source == "minivtab":
        from .minivtab import TASKS

        if c.task not in TASKS:
            raise UniTuneError(f"{w}.task: source 'minivtab' has the tasks {list(TASKS)}, got {c.task!r}")


def _fillable(key: str):
    """The rule of a few-shot list name: only {shots} and {seed}, and {shots} needs shots."""

    def rule(c: "DataConfig", w: str) -> None:
        template = c.list_template(key)
        if c.source != "fewshot" or template is None:
            return
        if "{shots}" in template and c.shots is None:
            raise UniTuneError(f"{w}.shots: needed to fill {{shots}} in {key} {template!r}")
        try:
            template.format(shots=c.shots, seed=c.seed)
        except (KeyError, IndexError, ValueError) as e:
            raise UniTuneError(
                f"{w}.{key}: {template!r} may only use the placeholders {{shots}} and {{seed}} ({e})"
            ) from None

    return rule


def _class_indices(c: "DataConfig", w: str) -> None:
    if c.classes is None:
        return
    k = c.classes
    if isinstance(k, (str, bytes)) or not isinstance(k, (list, tuple)) or not k:
        raise UniTuneError(f"{w}.classes: expected a non-empty list of class indices, got {k!r}")
    for i in k:
        if isinstance(i, bool) or not isinstance(i, int) or i < 0:
            raise UniTuneError(f"{w}.classes: class indices are integers >= 0, got {i!r}")
    if len(set(k)) != len(k):
        raise UniTuneError(f"{w}.classes: duplicate class in {list(k)}")
    if c.source == "digits" and max(k) > 9:
        raise UniTuneError(f"{w}.classes: digits has classes 0..9, got {max(k)}")
    if c.source == "synthetic" and c.num_classes is not None and max(k) >= c.num_classes:
        raise UniTuneError(f"{w}.classes: class {max(k)} >= num_classes {c.num_classes}")


def _three_sizes(c: "DataConfig", w: str) -> None:
    z = c.split_sizes
    if z is not None and (isinstance(z, (str, bytes)) or not isinstance(z, (list, tuple)) or len(z) != 3
                          or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in z)):
        raise UniTuneError(f"{w}.split_sizes: expected three integers >= 1 [train, val, test], got {z!r}")


@dataclass(frozen=True)
class DataConfig:
    """Each constraint is declared beside its field (:mod:`unitune.schema`); ``__post_init__``
    enforces them, so a ``DataConfig`` built in code is checked as one read from YAML."""

    source: str = choice(MISSING, SOURCES)
    root: str | None = text(None, rule=_root_given)
    task: str | None = text(None, rule=_task_known)
    shots: int | None = count(None, ge=1)
    # The data seed: fills `{seed}` in few-shot list names, picks the val_subset images and
    # generates the synthetic set (the digits split is fixed, so its test set never changes).
    # Loader shuffling has its own seed (the run's), passed to `build_loader`.
    seed: int = seed_field()
    train_list: str | None = text(None, rule=_fillable("train_list"))
    val_list: str | None = text(None, rule=_fillable("val_list"))
    trainval_list: str | None = text(None, rule=_fillable("trainval_list"))
    test_list: str | None = text(None, rule=_fillable("test_list"))
    # Original class indices to keep, in this order; they become labels 0..K-1.
    classes: tuple[int, ...] | None = rule_only(None, _class_indices)
    # vtab / fewshot: the class count when there is no classes.txt (else inferred from the lists);
    # synthetic: how many classes to generate.
    num_classes: int | None = count(None, ge=1)
    samples_per_class: int | None = count(None, ge=1)  # synthetic; default 20
    image_size: int | None = count(None, ge=1)  # synthetic, fractal, minivtab; default 32
    # minivtab: [train, val, test] images; default 800, 200, 1000
    split_sizes: tuple[int, ...] | None = rule_only(None, _three_sizes)
    batch_size: int = count(64, ge=1)
    eval_batch_size: int | None = count(None, ge=1)
    # Loader processes; each is a process of its own, and the OS refuses to fork thousands (a
    # BlockingIOError mid-epoch). 256 is above any machine's useful count.
    num_workers: int = count(4, ge=0, le=256)
    resize: str = choice("squash", RESIZE_MODES)
    augment: str = choice("none", AUGMENTS)
    val_subset: int | None = count(None, ge=1)
    # imagefolder without a val/ folder: this fraction of each class of train/ becomes val
    # (stratified, drawn with `seed`; unitune/data/split.py). trainval is all of train/.
    val_fraction: float | None = num(None, gt=0, lt=1)
    # imagefolder: val/ and test/ must hold every class of train/ (a class without images scores
    # nothing, and evaluate could only print 0 for it); true accepts such splits.
    allow_missing_classes: bool = flag(False)
    # Decode every image once before training (slow on big sets; corrupt files fail on load anyway).
    check_images: bool = flag(False)
    where: str = field(default="data", compare=False, repr=False)

    def __post_init__(self):
        check_fields(self, self.where)
        # YAML lists become tuples (hashable, comparable); generated sets get their defaults.
        for key in ("classes", "split_sizes"):
            if getattr(self, key) is not None:
                object.__setattr__(self, key, tuple(getattr(self, key)))
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
            value = data.get(key)  # a flag left false (to_dict writes every key) sets nothing
            if value is not None and value is not False and kind in SOURCES and kind not in sources:
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

