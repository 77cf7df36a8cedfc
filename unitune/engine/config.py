"""Run configuration: YAML files with one section per stage, validated up front.

A config file looks like ``configs/demo.yaml``; ``key=value`` overrides on the command line use
dotted paths (``supernet.epochs=3``). Every unknown key, wrong type or out-of-range value is a
:class:`UniTuneError` that names the file and the dotted path, before any expensive work starts.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from unitune.checks import check_device
from unitune.errors import UniTuneError
from unitune.io import check_plain_name, read_yaml, safe_load
from unitune.schema import check_fields, choice, count, num, rule_only, seed_field  # noqa: F401 (num etc.: part of this API)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is not None:
        return origin.__name__
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, where)
            except UniTuneError:
                continue
        raise UniTuneError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is typing.Literal:
        if value in typing.get_args(tp):
            return value
        raise UniTuneError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if tp is Any:
        return value
    if tp is type(None):
        if value is None:
            return None
        raise UniTuneError(f"{where}: expected null, got {value!r}")
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UniTuneError(f"{where}: expected a list, got {value!r}")
        (arg, *_) = typing.get_args(tp) or (Any,)
        return tuple(_coerce(v, arg, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise UniTuneError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is str:
        if isinstance(value, str):
            return value
    elif dataclasses.is_dataclass(tp):
        return from_mapping(tp, value, where)
    else:
        raise TypeError(f"unsupported config type {tp!r} at {where}")
    raise UniTuneError(f"{where}: expected {_type_name(tp)}, got {value!r}")


def from_mapping(cls: type, data: Any, where: str):
    """Build the dataclass ``cls`` from a mapping, naming ``where.key`` in every error."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise UniTuneError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    for key in data:
        if key not in names:
            raise UniTuneError(f"{where}.{key}: unknown key, expected one of {sorted(names)}")
    values = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    obj = cls(**values)
    check_fields(obj, where)
    return obj


def _warmup_within_epochs(cfg: "TrainConfig", where: str) -> None:
    if cfg.warmup_epochs > cfg.epochs:
        raise UniTuneError(f"{where}.warmup_epochs: expected 0..epochs ({cfg.epochs}), got {cfg.warmup_epochs}")


# The search's vocabulary, declared with its section (search/ imports these names from here).
SAMPLERS = ("tpe", "cmaes", "gp", "nsga2", "random", "evolution")
FITNESSES = ("supernet", "standalone")  # inherited weights | each subnet trained alone (search/pruning.py)
PRUNERS = ("auto", "none", "sha", "hyperband")
OBJECTIVES = (("acc",), ("acc", "params"))


def objective_names(value: Any, where: str = "objectives") -> tuple[str, ...]:
    """``'acc'``, ``'acc,params'`` (or a sequence of the names) as a tuple of names."""
    parts = tuple(p.strip() for p in value.split(",")) if isinstance(value, str) else tuple(value)
    if parts not in OBJECTIVES:
        raise UniTuneError(f"{where}: expected 'acc' or 'acc,params', got {','.join(map(str, parts))!r}")
    return parts


def _objectives(cfg: "SearchConfig", where: str) -> None:
    objective_names(cfg.objectives, f"{where}.objectives")


def _pruner_needs_one_objective(cfg: "SearchConfig", where: str) -> None:
    if cfg.pruner not in ("auto", "none") and len(objective_names(cfg.objectives)) > 1:
        # Optuna's trial.report is single-objective only.
        raise UniTuneError(f"{where}.pruner: {cfg.pruner!r} needs the single objective 'acc' "
                           f"(Optuna prunes single-objective studies only); use pruner none with acc,params")


def _epochs_when_ranking(cfg: "RerankConfig", where: str) -> None:
    if cfg.top_k and not cfg.epochs:
        raise UniTuneError(f"{where}.epochs: expected a positive integer when top_k is {cfg.top_k}, got 0")


@dataclass(frozen=True)
class RerankConfig:
    """``search.rerank``: re-rank the search's ``top_k`` best subnets (and the single methods) by
    ``epochs`` of stand-alone training (search/rerank.py); ``top_k: 0`` is off. (``Any``: the
    count check names every wrong value, a bool or a string included, the same way.)"""

    top_k: Any = count(5, ge=0, expected="a non-negative integer")
    epochs: Any = count(5, ge=0, expected="a non-negative integer", rule=_epochs_when_ranking)


def rerank_settings(value: Any, where: str = "search.rerank") -> tuple[int, int]:
    """(top_k, epochs) of a ``search.rerank`` value; a missing key takes its default (on: top 5,
    5 epochs); None or top_k 0 turn re-ranking off."""
    if value is None:
        return 0, 0
    if not isinstance(value, Mapping):
        raise UniTuneError(f"{where}: expected a mapping {{top_k: K, epochs: E}}, got {value!r}")
    cfg = from_mapping(RerankConfig, value, where)
    return (cfg.top_k, cfg.epochs) if cfg.top_k else (0, 0)


def _rerank(cfg: "SearchConfig", where: str) -> None:
    rerank_settings(cfg.rerank, f"{where}.rerank")


@dataclass(frozen=True)
class ModelConfig:
    """The timm backbone. ``weights`` is a local file (safetensors, or a state dict that
    ``torch.load(weights_only=True)`` reads) that :mod:`unitune.weights` loads completely or
    refuses: the head is replaced and the position embedding resized as timm does;
    ``pretrained: true`` without ``weights`` downloads from the hub."""

    backbone: str = "vit_base_patch16_224.orig_in21k"
    pretrained: bool = False
    weights: str | None = None
    kwargs: dict = field(default_factory=dict)  # timm.create_model overrides (img_size, depth, ...)


def _lr_mult(cfg: "TrainConfig", where: str) -> None:
    from unitune.supernet.wrap import check_lr_mult

    check_lr_mult(cfg.lr_mult, f"{where}.lr_mult")


@dataclass(frozen=True)
class TrainConfig:
    """An optimisation recipe (supernet or retrain stage)."""

    epochs: int = num(10, ge=1)
    lr: float = num(1e-3, gt=0)
    weight_decay: float = num(1e-4, ge=0)  # a negative decay grows the weights
    warmup_epochs: int = num(0, ge=0, rule=_warmup_within_epochs)
    min_lr: float = num(1e-6, ge=0)
    label_smoothing: float = num(0.0, ge=0, lt=1)
    mixup: float = num(0.0, ge=0)  # alpha of mixup's Beta(alpha, alpha); 0 = off
    cutmix: float = num(0.0, ge=0)
    grad_clip: float | None = num(None, gt=0)  # a negative max-norm would flip gradient signs
    amp: bool = True  # mixed precision, on CUDA only
    seed: int = seed_field()
    # steps between reads of the loss from the device (the bar's loss, the non-finite checks:
    # unitune.engine.train.StepChecks); 0 = every 25 steps
    log_every: int = num(0, ge=0)
    # A learning-rate multiplier per optimiser family: {prompt: 10, low_rank: 1, head: 2, ...}
    # (families: head, backbone, and each registered method's, unitune.supernet.methods.families());
    # a family left out trains at lr. Method families want different rates (DESIGN: "What decides
    # PEFT accuracy"), and a mix of methods cannot have them from one lr.
    lr_mult: dict = rule_only(field(default_factory=dict), _lr_mult)

    def to_dict(self) -> dict[str, Any]:
        """As plain data; ``lr_mult`` only when set, so a recipe written before it existed (and the
        checkpoints fingerprinted with it) reads the same."""
        out = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}
        if not out["lr_mult"]:
            del out["lr_mult"]
        return out


# What a subnet file's ``meta.recipe`` may set for its retrain (the hyper-parameters a search
# chose with the structure): the rest of the recipe stays the config's.
RECIPE_KEYS = ("lr", "weight_decay", "lr_mult")


def apply_recipe(cfg: TrainConfig, recipe: Any, source: str) -> TrainConfig:
    """``cfg`` with a subnet file's recipe (:data:`RECIPE_KEYS`) in place of its own values,
    checked as the config's own keys are; ``source`` names the file in a one-line error."""
    if not isinstance(recipe, Mapping):
        raise UniTuneError(f"{source}: meta.recipe: expected a mapping of {list(RECIPE_KEYS)}, got {recipe!r}")
    for key in recipe:
        if key not in RECIPE_KEYS:
            raise UniTuneError(f"{source}: meta.recipe.{key}: unknown key, expected some of {list(RECIPE_KEYS)}")
    try:
        out = dataclasses.replace(cfg, **recipe)
    except TypeError as e:
        raise UniTuneError(f"{source}: meta.recipe: {e}") from None
    check_fields(out, f"{source}: meta.recipe")
    return out


def load_config_dict(path: str | os.PathLike, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Read a YAML config and apply ``key.path=value`` overrides (values parsed as YAML)."""
    data = read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UniTuneError(f"{path}: expected a mapping of sections at the top level")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UniTuneError(f"override {item!r}: expected key.path=value")
        try:
            value = safe_load(raw)  # 1e-3 is a float, as in config files
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UniTuneError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return data


@dataclass(frozen=True)
class SupernetConfig(TrainConfig):
    """Supernet training: a recipe plus how each step picks the subnet(s) it trains."""

    sampler: str = choice("uniform", ("uniform", "sandwich", "budget"))  # uniform is NOAH's
    budget: str | int | None = None  # for the 'budget' sampler; defaults to search.budget
    # random subnets per sandwich step, each one more forward and backward pass (BigNAS uses 2);
    # the bound keeps a typo from building a list of 10**14 subnets before the first step
    num_random: int = num(1, ge=0, le=64)
    checkpoint_every: int = num(0, ge=0)  # steps between mid-epoch checkpoints (0: at epoch ends only)


@dataclass(frozen=True)
class SearchConfig:
    budget: str | int | None = None  # 400000, "0.4M", "0.5%" (of the backbone)
    trials: int = num(100, ge=1)
    sampler: str = choice("tpe", SAMPLERS)
    storage: str | None = None  # default: sqlite:///<out>/study.db
    study: str | None = None  # default: the config's name
    objectives: str = rule_only("acc", _objectives)  # acc | acc,params
    seed: int = seed_field()  # sampler seed (fitness may use data.val_subset for a fixed, smaller val set)
    # {top_k: K, epochs: E} (RerankConfig): stand-alone re-rank of the final pick (search/rerank.py); top_k 0 is off.
    # A mapping here (as given: run manifests record it so), checked as a RerankConfig.
    rerank: dict = rule_only(dataclasses.field(default_factory=lambda: {"top_k": 5, "epochs": 5}), _rerank)
    fitness: str = choice("supernet", FITNESSES)  # supernet (inherited weights) | standalone (train each subnet)
    # auto | none | sha | hyperband (Optuna's pruners): see search/pruning.py
    pruner: str = choice("auto", PRUNERS, rule=_pruner_needs_one_objective)
    standalone_epochs: int = num(3, ge=1)  # epochs per trial of the standalone fitness (its fidelities)

    @property
    def needs_supernet(self) -> bool:
        """The supernet fitness reads a trained supernet; the standalone one trains each subnet itself."""
        return self.fitness != "standalone"


@dataclass(frozen=True)
class RetrainConfig(TrainConfig):
    init: str = choice("pretrained", ("pretrained", "supernet"))  # where the PEFT weights start


@dataclass(frozen=True)
class PretrainConfig(TrainConfig):
    """Optional first stage: fully train the backbone on a *source* task, so that the PEFT stages
    adapt it to a different target task (the offline demo). ``data`` is a data section."""

    data: dict = field(default_factory=dict)


def _overrides_mapping(cfg: "CompareQuick", where: str) -> None:
    if not isinstance(cfg.overrides, Mapping):
        raise UniTuneError(f"{where}.overrides: expected a mapping of dotted keys to values, got {cfg.overrides!r}")


@dataclass(frozen=True)
class CompareQuick:
    """``compare.quick``: overrides for a short run (``--quick``), and lists used instead of compare's."""

    overrides: Any = rule_only(field(default_factory=dict), _overrides_mapping)
    tasks: Any = None
    seeds: Any = None
    methods: Any = None


RANGE_KEYS = ("lr", "weight_decay", "lr_mult", "full_lr", "full_head_mult")  # search.tune.TuneRanges' fields


def _ranges(cfg: "CompareTune", where: str) -> None:
    if not isinstance(cfg.ranges, Mapping):
        raise UniTuneError(f"{where}.ranges: expected a mapping like {{lr: [1e-4, 1e-1]}}, got {cfg.ranges!r}")
    for key, value in cfg.ranges.items():
        if key not in RANGE_KEYS:
            raise UniTuneError(f"{where}.ranges.{key}: unknown key, expected some of {list(RANGE_KEYS)}")
        ok = isinstance(value, (list, tuple)) and len(value) == 2 and \
            all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
        if not ok or not 0 < value[0] < value[1]:
            raise UniTuneError(f"{where}.ranges.{key}: expected [low, high] with 0 < low < high, got {value!r}")


def _splits(cfg: "CompareTune", where: str) -> None:
    if cfg.splits == 1:
        raise UniTuneError(f"{where}.splits: 1 split has no spread; expected 0 (off) or >= 2")
    if cfg.kfold and cfg.splits == 0:
        raise UniTuneError(f"{where}.kfold: true with splits 0 (the selection off): expected splits >= 2, the folds")


@dataclass(frozen=True)
class CompareTune:
    """``compare.tune``: every row's recipe tuned the same way before its cells
    (unitune/commands/compare/tuning.py; the settings of search/tune.py's ``tune``)."""

    trials: int = count(8, 1)  # finished (complete or pruned) trials per row and task
    epochs: int = count(3, 1)  # stand-alone epochs per trial: the pruner's fidelities
    finalists: int = count(3, 1)  # the best trials judged again on repeated splits (or folds)
    splits: int = count(3, 0, rule=_splits)  # random train/val splits of train+val per finalist (kfold: folds); 0: off
    kfold: bool = False  # the splits are instead k folds of train+val (each image judged once)
    structures: int = count(3, 1)  # the search row: the search study's best structures (+ the single methods)
    soup: int = count(3, 1)  # the soup row: members (the search pick's best recipes, then its lr neighbours)
    seed: int = count(0, 0)  # TPE and the splits
    # the search row's study starts from every single-method row's finished trials (their CPU-s
    # counted in its row), then runs its own `trials`: it chooses among tuned single methods and
    # searched structures instead of re-tuning all of them in the trials one method gets
    warm_start: bool = True
    ranges: Any = rule_only(field(default_factory=dict), _ranges)  # log-uniform [low, high] per key


def _tune(cfg: "CompareConfig", where: str) -> None:
    if cfg.tune is not None:
        from_mapping(CompareTune, cfg.tune, f"{where}.tune")


def _quick(cfg: "CompareConfig", where: str) -> None:
    if cfg.quick is None:
        return
    if not isinstance(cfg.quick, Mapping):
        raise UniTuneError(f"{where}.quick: expected a mapping (overrides for a short run), got {cfg.quick!r}")
    from_mapping(CompareQuick, cfg.quick, f"{where}.quick")


@dataclass(frozen=True)
class CompareConfig:
    """The ``compare:`` section of `unitune compare` (the stages ignore it). Its keys and its
    ``quick`` part are declared here; the lists (``tasks``, ``seeds``, ``methods``, ``groups``)
    are checked where the command line, ``compare.quick`` and ``compare`` are resolved in that
    order (unitune/commands/compare/plan.py), since the first one given is the one used."""

    tasks: Any = None
    groups: Any = None
    seeds: Any = None
    methods: Any = None
    quick: Any = rule_only(None, _quick)  # checked on every run: a typo (`overides`) is found before --quick
    tune: Any = rule_only(None, _tune)  # CompareTune: every row tuned alike (absent: one recipe for all)


def check_compare_section(value: Any, src: str) -> CompareConfig:
    """The ``compare:`` section of the config file ``src``, checked (one-line errors)."""
    if not isinstance(value, Mapping):
        raise UniTuneError(f"{src}: compare: expected a mapping, got {value!r}")
    return from_mapping(CompareConfig, value, f"{src}: compare")


LOGGERS = ("csv", "tensorboard")


def parse_logging(value: Any, where: str) -> tuple[str, ...]:
    """The config's ``logging`` value as a tuple of logger names: null, one name or a list."""
    if value is None or value == "none":
        return ()
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise UniTuneError(f"{where}: expected one of {list(LOGGERS)} or a list of them, got {value!r}")
    for name in names:
        if name not in LOGGERS:
            raise UniTuneError(f"{where}: unknown logger {name!r}, expected some of {list(LOGGERS)}")
    if "tensorboard" in names and importlib.util.find_spec("tensorboard") is None:
        raise UniTuneError(f"{where}: 'tensorboard' needs the tensorboard package: pip install tensorboard")
    return tuple(dict.fromkeys(names))  # in the given order, each once


# ``compare`` belongs to `unitune compare` (declared as CompareConfig, checked by check_compare_section
# in unitune/commands/compare/plan.py); the stages ignore it.
RUN_SECTIONS = ("name", "device", "model", "data", "space", "pretrain", "supernet", "search", "retrain", "compare",
                "logging")


@dataclass(frozen=True)
class RunConfig:
    """A whole run: one section per stage. ``space`` stays a mapping here (the supernet package
    owns its schema); :func:`load_run_config` validates it with the rest."""

    name: str
    device: str
    model: ModelConfig
    data: Any  # unitune.data.DataConfig
    space: dict
    supernet: SupernetConfig
    search: SearchConfig
    retrain: RetrainConfig
    pretrain: PretrainConfig | None = None
    pretrain_data: Any = None  # unitune.data.DataConfig of the source task
    # loggers besides each stage's JSONL log: "csv", "tensorboard" (unitune/stagelog.py)
    logging: tuple[str, ...] = ()
    source: str = ""
    raw: dict = field(default_factory=dict, compare=False, repr=False)
    # ``space`` as the SearchSpace load_run_config checked it built (unitune.engine.context.RunContext.space);
    # a dataclasses.replace(run, space=...) must set it to None (or the new SearchSpace) too
    search_space: Any = field(default=None, compare=False, repr=False)

    def section(self, name: str) -> dict[str, Any]:
        """A section as plain data (for manifests, checkpoints and provenance)."""
        value = getattr(self, name)
        if hasattr(value, "to_dict"):
            return value.to_dict()
        if dataclasses.is_dataclass(value):
            return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(value).items()}
        return dict(value) if isinstance(value, Mapping) else value


def load_run_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> RunConfig:
    """Read and validate a whole run config; every error names the file and the dotted key."""
    from unitune.data import DataConfig
    from unitune.supernet.space import SearchSpace

    raw = load_config_dict(path, overrides)
    src = str(path)
    for key in raw:
        if key not in RUN_SECTIONS:
            raise UniTuneError(f"{src}: {key}: unknown section, expected one of {list(RUN_SECTIONS)}")
    name = raw.get("name") or Path(path).stem
    if not isinstance(name, str):
        raise UniTuneError(f"{src}: name: expected a string, got {name!r}")
    # The default run folder is runs/<name>: a plain name, so it stays inside runs/.
    check_plain_name(name, f"{src}: name" if raw.get("name") else f"{src}: name (from the file name; set name:)")
    device = check_device(raw.get("device", "auto"), f"{src}: device")
    space = raw.get("space")
    space = {} if space is None else space  # an empty list or string is a mistake, not the default space
    search_space = SearchSpace.from_dict(space, source=f"{src}: space")  # validated now; the run's context keeps it
    pretrain = pretrain_data = None
    if raw.get("pretrain") is not None:
        pretrain = from_mapping(PretrainConfig, raw["pretrain"], f"{src}: pretrain")
        pretrain_data = DataConfig.from_dict(pretrain.data, source=f"{src}: pretrain.data")
        if raw.get("model", {}).get("weights"):
            raise UniTuneError(f"{src}: model.weights and a pretrain section exclude each other (pretrain makes the weights)")
    return RunConfig(
        name=name,
        device=device,
        model=from_mapping(ModelConfig, raw.get("model"), f"{src}: model"),
        data=DataConfig.from_dict(raw.get("data"), source=f"{src}: data"),
        space=dict(space),
        supernet=from_mapping(SupernetConfig, raw.get("supernet"), f"{src}: supernet"),
        search=from_mapping(SearchConfig, raw.get("search"), f"{src}: search"),
        retrain=from_mapping(RetrainConfig, raw.get("retrain"), f"{src}: retrain"),
        pretrain=pretrain,
        pretrain_data=pretrain_data,
        logging=parse_logging(raw.get("logging"), f"{src}: logging"),
        source=src,
        raw=raw,
        search_space=search_space,
    )


# ---- what the stages record in the run folder ---------------------------------------------------

# The config a run folder was made with, overrides applied: `unitune inspect DIR` reads it, and a
# person sees what produced the folder even when the config file has changed since.
CONFIG_ECHO = "run_config.yaml"


def _split_records(run: RunConfig, out: Path) -> list[tuple[Any, Path]]:
    """The data sections whose val is held out of train/ (data.val_fraction), with their record."""
    from unitune.data import SPLIT_FILE

    pairs = [(run.data, out / SPLIT_FILE), (run.pretrain_data, out / f"pretrain_{SPLIT_FILE}")]
    return [(cfg, path) for cfg, path in pairs if cfg is not None and getattr(cfg, "val_fraction", None) is not None]


def check_run_records(run: RunConfig, out: str | os.PathLike) -> None:
    """Before a stage: a one-line error if the val split recorded in ``out`` is not the one the
    data now makes (unitune/data/split.py). Reads only."""
    from unitune.data import check_split

    for cfg, path in _split_records(run, Path(out)):
        check_split(cfg, path)


def record_run(run: RunConfig, out: str | os.PathLike) -> None:
    """After a stage: the config echo and the val split records (each written atomically)."""
    from unitune.data import record_split
    from unitune.io import write_text_atomic

    out = Path(out)
    header = (f"# The config of this run folder ({run.source}, overrides applied), as the last stage ran it.\n"
              f"# Written by unitune; `unitune inspect {out}` reads it.\n")
    write_text_atomic(out / CONFIG_ECHO, header + yaml.safe_dump(run.raw, sort_keys=False))
    for cfg, path in _split_records(run, out):
        record_split(cfg, path)
