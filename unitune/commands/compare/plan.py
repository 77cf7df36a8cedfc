"""The plan of a comparison: every task config, seed and row checked before any work, and the
cell record every finished cell is read back through."""

from __future__ import annotations

import copy
import itertools
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from unitune.checks import check_output_dir, check_seed
from unitune.engine.config import (CompareTune, RunConfig, check_compare_section, from_mapping, load_config_dict,
                                   load_run_config)
from unitune.engine.context import RunContext, RunLayout
from unitune.errors import UniTuneError
from unitune.io import check_no_outside_links, inside, read_json
from unitune.schema import Key, check_record, json_key

METHODS = ("linear", "lora", "adapter", "vpt", "ssf", "full", "search")  # the default rows
# The rows that are no registered PEFT method; every other row is one (:func:`known_rows`).
# ``soup``: the search row's greedy weight soup (needs ``compare.tune`` and the search row).
SPECIAL = ("linear", "full", "search", "soup")
# VTAB-1k's task folders (NOAH's names) by group.
VTAB_GROUPS = {
    "natural": ("cifar", "caltech101", "dtd", "oxford_flowers102", "oxford_iiit_pet", "svhn", "sun397"),
    "specialized": ("patch_camelyon", "eurosat", "resisc45", "diabetic_retinopathy"),
    "structured": ("clevr_count", "clevr_dist", "dmlab", "kitti", "dsprites_loc", "dsprites_ori",
                   "smallnorb_azi", "smallnorb_ele"),
}
GROUP_ORDER = ("natural", "specialized", "structured")
META_FILE = "compare.json"
PRETRAIN_RESULT = "pretrain_result.json"
SEARCH_RESULT = "search_result.json"
CSV_FILE, TABLE_FILE, PLOT_FILE = "results.csv", "table.md", "accuracy_vs_params.png"
CSV_COLUMNS = ("task", "group", "method", "seed", "test_accuracy", "test_images", "params", "params_with_head",
               "epochs", "seconds", "cpu_seconds", "sizes", "stage_seconds")



def known_rows() -> tuple[str, ...]:
    """Every row a comparison can have: the linear probe, each registered method (in registry
    order), full fine-tuning and the search."""
    from unitune.supernet.methods import METHODS as REGISTRY

    return ("linear", *REGISTRY, "full", "search", "soup")


def method_rows(methods: Sequence[str]) -> list[str]:
    """The rows of ``methods`` that are one registered method at one size (not linear, full, search)."""
    return [m for m in methods if m not in SPECIAL]


@dataclass
class Plan:
    """Everything checked before any work: the task configs, seeds, methods and the folder."""

    base: RunConfig
    out: Path
    tasks: tuple[str, ...]
    groups: dict[str, str]  # task -> group
    seeds: tuple[int, ...]
    methods: tuple[str, ...]
    task_runs: dict[str, RunConfig]
    fingerprint: str
    quick: bool = False  # --quick: the outputs say their numbers mean nothing
    tune: Any = None  # compare.tune (unitune.engine.config.CompareTune): every row tuned alike; None: one recipe
    # Per task: its RunContext (folder tasks/<task>; the tasks share one model and space, so one
    # space, shapes-only backbone and budget serve them all) and its head size (the data's).
    contexts: dict[str, RunContext] = field(default_factory=dict, repr=False)
    num_classes: dict[str, int] = field(default_factory=dict)

    def context(self, task: str) -> RunContext:
        """The task's context; its search and cells derive theirs from it (:meth:`RunContext.moved`)."""
        if task not in self.contexts:
            first = next(iter(self.contexts.values()), None)
            folder, run = self.out / "tasks" / task, self.task_runs[task]
            self.contexts[task] = RunContext(run, folder) if first is None else first.moved(folder, run)
        return self.contexts[task]

    def classes(self, task: str) -> int:
        """The task's number of classes (its trainval split's), read once."""
        if task not in self.num_classes:
            from unitune.data import build_dataset

            self.num_classes[task] = build_dataset(self.task_runs[task].data, "trainval", None).num_classes
        return self.num_classes[task]

    def dims(self, task: str):
        """The backbone's :class:`~unitune.supernet.BackboneDims` with the task's head."""
        return self.context(task).dims_for(self.classes(task))

    @property
    def cells(self) -> list[tuple[str, str, int]]:
        return [(t, m, s) for t in self.tasks for m in self.methods for s in self.seeds]

    def cell_file(self, task: str, method: str, seed: int) -> Path:
        return self.out / "cells" / task / f"{method}-seed{seed}.json"

    def read_cell(self, task: str, method: str, seed: int) -> dict[str, Any]:
        """The finished cell's row, checked (:class:`CellRecord`): of this cell and this comparison."""
        return CellRecord.load(self.cell_file(task, method, seed), (task, method, seed), self.fingerprint).to_json()

    def cell_dir(self, task: str, method: str, seed: int) -> Path:
        return self.out / "tasks" / task / method / f"seed{seed}"

    def search_dir(self, task: str) -> Path:
        return self.out / "tasks" / task / "search"


def _number(lo: float | None = None, hi: float | None = None) -> Any:
    """A key rule: a finite number (JSON reads NaN and Infinity), within [lo, hi] where given."""
    def rule(name: str, value: Any, where: str) -> None:
        if value is None:
            return
        if value != value or value in (float("inf"), float("-inf")) or \
                (lo is not None and value < lo) or (hi is not None and value > hi):
            span = f" in [{lo}, {hi}]" if hi is not None else f" >= {lo}" if lo is not None else ""
            raise UniTuneError(f"{where}: {name!r}: expected a finite number{span}, got {value!r}")
    return rule


NUMBER = (int, float)
# The keys of a cell file (cells/<task>/<method>-seed<k>.json), their JSON types and ranges.
CELL_KEYS: dict[str, Key] = {
    "task": json_key(str), "group": json_key(str), "method": json_key(str), "seed": json_key(int),
    "test_accuracy": json_key(NUMBER, _number(0, 1)), "test_images": json_key(int, _number(1)),
    "params": json_key(int, _number(0)), "params_with_head": json_key(int, _number(0)),
    "epochs": json_key(int, _number(0)), "seconds": json_key(NUMBER, _number(0)),
    "cpu_seconds": json_key(NUMBER, _number(0)), "sizes": json_key(str),
    "stage_seconds": json_key((*NUMBER, type(None)), _number(0)), "fingerprint": json_key(str),
    # compare.tune: the recipe the row's study chose (JSON) and what its tuning cost; null untuned
    "recipe": json_key((str, type(None))), "tune_cpu_seconds": json_key((*NUMBER, type(None)), _number(0)),
}
OPTIONAL_CELL_KEYS = ("recipe", "tune_cpu_seconds")  # absent from cells written before compare.tune


@dataclass(frozen=True)
class CellRecord:
    """One finished cell, as its file holds it. Every cell is read back through :meth:`load`
    (a rerun's resume, the report, the benchmark scripts): a damaged, hand-edited or copied file
    is a one-line error naming the file and the key, never a traceback or a silent NaN in the table."""

    task: str
    group: str
    method: str
    seed: int
    test_accuracy: float
    test_images: int
    params: int
    params_with_head: int
    epochs: int
    seconds: float
    cpu_seconds: float
    sizes: str
    stage_seconds: float | None
    fingerprint: str
    recipe: str | None = None
    tune_cpu_seconds: float | None = None

    @classmethod
    def from_json(cls, data: Any, source: str) -> "CellRecord":
        if isinstance(data, dict):
            data = {**{k: None for k in OPTIONAL_CELL_KEYS}, **data}
        check_record(data, CELL_KEYS, source)
        extra = sorted(set(data) - set(CELL_KEYS))
        if extra:
            raise UniTuneError(f"{source}: unknown key {extra[0]!r}, expected the keys {list(CELL_KEYS)}")
        return cls(**data)

    @classmethod
    def load(cls, path: Path, cell: tuple[str, str, int], fingerprint: str) -> "CellRecord":
        """The record of ``path``, which must be the file of ``cell`` written by the comparison
        whose plan has ``fingerprint`` (a file copied from another folder or config is refused)."""
        record = cls.from_json(read_json(path), str(path))
        got = (record.task, record.method, record.seed)
        if got != tuple(cell):
            raise UniTuneError(f"{path}: holds the cell {'/'.join(map(str, got))}, expected "
                               f"{'/'.join(map(str, cell))}; remove it to recompute the cell")
        if record.fingerprint != fingerprint:
            raise UniTuneError(f"{path}: 'fingerprint' {record.fingerprint!r} is of another comparison (this one is "
                               f"{fingerprint!r}); remove the file to recompute the cell")
        return record

    def to_json(self) -> dict[str, Any]:
        """The record as its file holds it; an untuned cell without the tuning keys (the form
        written before compare.tune, so an untuned comparison's files stay as they were)."""
        data = dataclasses.asdict(self)
        return {k: v for k, v in data.items() if not (k in OPTIONAL_CELL_KEYS and v is None)}


def parse_names(text: str, what: str) -> tuple[str, ...]:
    """``'a,b'`` -> ``('a', 'b')``; an empty list is a mistake."""
    names = tuple(n.strip() for n in str(text).split(",") if n.strip())
    if not names:
        raise UniTuneError(f"--{what}: expected a comma-separated list, got an empty one ({text!r})")
    return names


def parse_seeds(text: str) -> tuple[int, ...]:
    seeds = []
    for part in parse_names(text, "seeds"):
        try:
            seeds.append(int(part))
        except ValueError:
            raise UniTuneError(f"--seeds: expected integers like 0,1,2, got {part!r}") from None
    return _check_seeds(seeds, "--seeds")


def _check_seeds(seeds: Any, where: str) -> tuple[int, ...]:
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, (list, tuple)) or not seeds:
        raise UniTuneError(f"{where}: expected a non-empty list of integer seeds, got {seeds!r}")
    for s in seeds:  # each becomes retrain.seed: the range every seed has (unitune.checks)
        check_seed(s, where)
    if len(set(seeds)) != len(seeds):
        raise UniTuneError(f"{where}: duplicate seed in {list(seeds)}")
    return tuple(seeds)


def _check_names(names: Any, where: str, known: Sequence[str] | None = None) -> tuple[str, ...]:
    if isinstance(names, (str, bytes)) or not isinstance(names, (list, tuple)) or not names:
        raise UniTuneError(f"{where}: expected a non-empty list, got {names!r}")
    for n in names:
        if not isinstance(n, str) or not n:
            raise UniTuneError(f"{where}: expected names, got {n!r}")
        if known is not None and n not in known:
            raise UniTuneError(f"{where}: unknown method {n!r}, expected some of {list(known)}")
    if len(set(names)) != len(names):
        raise UniTuneError(f"{where}: duplicate in {list(names)}")
    return tuple(names)


def _overrides(mapping: dict[str, Any]) -> list[str]:
    """compare.quick.overrides as command-line overrides (check_compare_section checked it is a mapping)."""
    return [f"{k}={json.dumps(v)}" for k, v in mapping.items()]  # JSON is YAML: read back as written


def plan_compare(config: str | Path, out: str | Path | None = None, tasks: Sequence[str] | None = None,
                 seeds: Sequence[int] | None = None, methods: Sequence[str] | None = None, quick: bool = False,
                 overrides: Sequence[str] = ()) -> Plan:
    """Read and check everything a comparison needs; nothing is written, no weight is loaded."""
    from unitune.data import DataConfig, build_dataset
    from unitune.data.minivtab import GROUPS as MINIVTAB_GROUPS

    src = str(config)
    raw = load_config_dict(config, overrides)
    section = raw.pop("compare", None) or {}
    check_compare_section(section, src)  # its keys and compare.quick, declared in unitune/engine/config.py
    defaults = dict(section)
    quick_overrides: list[str] = []
    q = section.get("quick")
    if quick:
        if not isinstance(q, dict):
            raise UniTuneError(f"{src}: --quick needs a compare.quick section (overrides for a short run)")
        quick_overrides = _overrides(q.get("overrides", {}))
        defaults.update({k: v for k, v in q.items() if k != "overrides"})
    all_overrides = [*quick_overrides, *overrides]
    raw = load_config_dict(config, all_overrides)
    # compare.tune as the overrides leave it (--quick may shorten the tuning too)
    tune_raw = (raw.pop("compare", None) or {}).get("tune")
    tune = None if tune_raw is None else from_mapping(CompareTune, tune_raw, f"{src}: compare.tune")

    # The method, task and seed lists: command line, then compare.quick, then compare, then data.task.
    known = known_rows()
    if methods is not None:
        methods = _check_names(list(methods), "--methods", known)
    else:
        methods = _check_names(defaults.get("methods", list(METHODS)), f"{src}: compare.methods", known)
    if seeds is not None:
        seeds = _check_seeds(list(seeds), "--seeds")
    else:
        seeds = _check_seeds(defaults.get("seeds", [raw.get("retrain", {}).get("seed", 0)]), f"{src}: compare.seeds")
    data_raw = raw.get("data") or {}
    if tasks is not None:
        tasks = _check_names(list(tasks), "--tasks")
    elif "tasks" in defaults:
        tasks = _check_names(defaults["tasks"], f"{src}: compare.tasks")
    elif isinstance(data_raw, dict) and data_raw.get("task"):
        tasks = (str(data_raw["task"]),)
    else:
        raise UniTuneError(f"{src}: no tasks: give --tasks, compare.tasks or data.task")

    groups: dict[str, str] = {}
    configured = defaults.get("groups") or {}
    if not isinstance(configured, dict):
        raise UniTuneError(f"{src}: compare.groups: expected a mapping of group to task list, got {configured!r}")
    for group, names in configured.items():
        for t in _check_names(names, f"{src}: compare.groups.{group}"):
            if t in groups:  # its rows would count in one group's mean and silently not in the other's
                raise UniTuneError(f"{src}: compare.groups.{group}: task {t!r} is already in group {groups[t]!r}; "
                                   f"a task belongs to one group")
            groups[t] = str(group)
    for t in tasks:
        if t not in groups:
            vtab = next((g for g, names in VTAB_GROUPS.items() if t in names), None)
            groups[t] = vtab or MINIVTAB_GROUPS.get(t, "other")

    # The base run (with pretrain, if any), checked whole; then one run per task.
    base = load_run_config(config, all_overrides)
    # A file there, or no right to write, fails now, not after the pretraining.
    out = check_output_dir(Path(out) if out else inside("runs", Path("runs") / base.name))
    check_no_outside_links(out)
    weights = str(RunLayout(out).pretrain_weights.resolve()) if base.pretrain is not None else None
    task_runs, num_classes = {}, {}
    for t in tasks:
        traw = copy.deepcopy(raw)
        traw["name"] = f"{base.name}-{t}"
        traw.setdefault("data", {})["task"] = t
        if weights is not None:
            traw.pop("pretrain", None)
            traw.setdefault("model", {})["weights"] = weights
        data = DataConfig.from_dict(traw["data"], source=f"{src}: data (task {t!r})")
        for folder in ("tasks", "cells"):  # t is a plain name (DataConfig): its folders stay inside
            inside(out, out / folder / t)
        run = dataclasses.replace(base, name=traw["name"], data=data, raw=traw, pretrain=None, pretrain_data=None,
                                  model=dataclasses.replace(base.model, weights=weights or base.model.weights),
                                  source=str(out / "tasks" / t / "config.yaml"))
        images = {}
        for split in ("train", "val", "trainval", "test"):  # indexed, not read: a missing list fails now
            split_set = build_dataset(run.data, split, None)
            images[split] = len(split_set)
            if split == "trainval":
                num_classes[t] = split_set.num_classes
        split_set.verify_files()  # the test files are read after training: verified (not decoded) now
        if tune is not None and tune.kfold and tune.splits > images["train"] + images["val"]:
            raise UniTuneError(f"{src}: compare.tune.splits: {tune.splits} folds (kfold) of the "
                               f"{images['train'] + images['val']} train+val images of task {t!r}; expected at most one "
                               f"fold per image")
        task_runs[t] = run
    # the tuning settings too, where given (an untuned comparison keeps its fingerprint), and the
    # tuner's pruning rule: records tuned under another rule are of another comparison
    if tune is None:
        what = raw
    else:
        from unitune.search.tune import PRUNER

        settings = dataclasses.asdict(tune)
        if not settings["kfold"]:  # a key added after the suites' records: its default keeps their fingerprint
            del settings["kfold"]
        what = {**raw, "compare.tune": settings, "compare.tune.pruner": PRUNER}
    fingerprint = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]
    plan = Plan(base, out, tasks, groups, seeds, methods, task_runs, fingerprint, quick=quick, num_classes=num_classes,
                tune=tune)
    if "soup" in methods and (tune is None or "search" not in methods):
        raise UniTuneError(f"{src}: the 'soup' row is the search row's greedy soup of tuned recipes: it needs a "
                           f"compare.tune section and the 'search' row")
    if tune is not None:
        from unitune.search.tune import TuneRanges

        if base.retrain.init == "supernet":  # the studies train from the pretrained backbone: the cells must too
            raise UniTuneError(f"{src}: compare.tune tunes every row from the pretrained backbone, but "
                               f"retrain.init: supernet would retrain the search row from the supernet; use "
                               f"retrain.init: pretrained with compare.tune")
        TuneRanges(**{k: tuple(v) for k, v in tune.ranges.items()}).check(f"{src}: compare.tune.ranges")
    ctx = plan.context(tasks[0])
    for m in method_rows(methods):  # a row's size comes from the space: refused now, not after the pretraining
        if not any(ctx.space.choices(m)):
            raise UniTuneError(f"{src}: space.{m}: has no size above 0 for the {m!r} row; give it sizes "
                               f"(e.g. the override space.{m}=[0,4,8]) or drop {m!r} from the methods")
    if "search" in methods:
        from unitune.retrain.train import check_init_source
        from unitune.search.stage import check_search_stage

        check_search_stage(ctx, out)
        check_init_source(task_runs[tasks[0]])
    elif method_rows(methods):
        search_budget(ctx)  # a malformed budget fails now, not after the pretraining
        _check_methods_fit(ctx, method_rows(methods))
    for t in tasks:  # one context per task, sharing what the first built
        plan.context(t)
    return plan


# ------------------------------------------------------ what the rows need of a task config

def search_budget(ctx: RunContext) -> int | None:
    """``search.budget`` as a parameter count (None without one): what a single-method row must fit."""
    if ctx.run.search.budget is None:
        return None
    return ctx.budget(ctx.run.search.budget, f"{ctx.source}: search.budget")


def largest_uniform(method: str, ctx: RunContext, num_classes: int):
    """The one-method subnet, same size in every block, with the most parameters within the
    budget (without a budget: the largest); when even the smallest size is over budget, the
    smallest (the row's parameter count shows it). ``num_classes``: the task's head, counted."""
    from unitune.supernet import Subnet, count_params
    from unitune.supernet.methods import METHODS

    space, dims, budget = ctx.space, ctx.dims_for(num_classes), search_budget(ctx)

    companions = [g.name for g in METHODS.values() if g.site == "model" and g.report_key == method]
    options = []
    for size in space.choices(method):
        if size == 0:
            continue
        # with each choice of the model-level methods reported with it (SSF: the global SSF)
        for extra in itertools.product(*([(g, c) for c in space.choices(g)] for g in companions)):
            subnet = Subnet.uniform(dims.depth, **{method: size}, **dict(extra))
            options.append((count_params(subnet, dims, space).total, subnet))
    if not options:
        raise UniTuneError(f"{ctx.source}: space.{method}: has no size above 0; drop {method!r} from the methods")
    fitting = [o for o in options if budget is None or o[0] <= budget]
    return (max(fitting, key=lambda o: o[0]) if fitting else min(options, key=lambda o: o[0]))[1]


def describe(subnet) -> str:
    """The row's ``sizes`` column: :meth:`Subnet.describe`."""
    return subnet.describe()


def _check_methods_fit(ctx: RunContext, methods: Sequence[str]) -> None:
    """The single-method rows' methods (with the model-level ones reported with them) must fit
    the backbone (SSF folds only into a bias): refused now, not after the pretraining."""
    from unitune.supernet import Subnet, check_vit
    from unitune.supernet.methods import METHODS as REGISTRY

    space = ctx.space
    names = [g.name for g in REGISTRY.values() if g.name in methods or (g.site == "model" and g.report_key in methods)]
    # the shapes-only backbone's head is immaterial here: the methods' checks read the blocks and norms
    check_vit(ctx.shapes, sizes=Subnet.uniform(ctx.depth, **{n: space.max_size(n) for n in names}))
