"""``unitune compare``: the VTAB-style table of every method on many tasks and seeds.

For each task and seed, with one and the same retrain recipe (the config's ``retrain:``), each
trained on ``trainval`` and scored once on ``test`` after its last epoch:

- ``linear``: the linear probe (only the head trains);
- ``lora`` / ``adapter`` / ``vpt`` / ``ssf``: one method at the same size in every block, the
  largest size of the search space whose count fits the run's budget (``search.budget``);
- ``full``: full fine-tuning (every weight of the backbone and the head);
- ``search``: the searched subnet: supernet on train, search on val (``unitune run``'s stages;
  no supernet with ``search.fitness: standalone``), then retrained per seed. The supernet and
  search run once per task (seed ``supernet.seed`` / ``search.seed``); the seeds vary the
  retraining (PEFT and head init, data order), as for the other rows.

A ``pretrain:`` section pretrains the backbone once into ``OUT/pretrain/`` and every task starts
from it. The run folder holds one JSON file per finished cell (``cells/<task>/<method>-seed<k>.json``,
written atomically): a rerun skips those and resumes an interrupted retrain from its checkpoint.
Outputs: ``results.csv`` (one row per task x method x seed), ``table.md`` (mean +- std over seeds
per task, the group means and the mean of the group means, as VTAB papers report) and
``accuracy_vs_params.png``.

The ``compare:`` section of a config (optional; ``configs/vtab/*.yaml`` have none and compare
``data.task``, or the tasks given with ``--tasks``)::

    compare:
      tasks: [count, location, digits]        # values of data.task
      groups: {natural: [digits], structured: [count, location]}
      seeds: [0, 1, 2]
      methods: [linear, lora, adapter, vpt, ssf, full, search]
      quick:                                  # what --quick changes: a run of minutes
        overrides: {retrain.epochs: 1, data.split_sizes: [40, 20, 40]}
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import hashlib
import io
import itertools
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from unitune.checks import check_output_dir, check_seed
from unitune.engine.config import RunConfig, load_config_dict, load_run_config
from unitune.errors import UniTuneError
from unitune.io import check_no_outside_links, inside, read_json, write_json_atomic, write_text_atomic, write_yaml_atomic
from unitune.schema import Key, check_record, json_key

METHODS = ("linear", "lora", "adapter", "vpt", "ssf", "full", "search")
SINGLE = ("lora", "adapter", "vpt", "ssf")
SECTION_KEYS = ("tasks", "groups", "seeds", "methods", "quick")
QUICK_KEYS = ("overrides", "tasks", "seeds", "methods")
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


# ------------------------------------------------------------------------------------ the plan

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
}


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

    @classmethod
    def from_json(cls, data: Any, source: str) -> "CellRecord":
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
        return dataclasses.asdict(self)


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


def _overrides(mapping: Any, where: str) -> list[str]:
    if not isinstance(mapping, dict):
        raise UniTuneError(f"{where}: expected a mapping of dotted keys to values, got {mapping!r}")
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
    if not isinstance(section, dict):
        raise UniTuneError(f"{src}: compare: expected a mapping, got {section!r}")
    for key in section:
        if key not in SECTION_KEYS:
            raise UniTuneError(f"{src}: compare.{key}: unknown key, expected one of {list(SECTION_KEYS)}")
    defaults = dict(section)
    quick_overrides: list[str] = []
    q = section.get("quick")
    if q is not None:  # checked on every run: a typo (`overides`) is found before anyone runs --quick
        if not isinstance(q, dict):
            raise UniTuneError(f"{src}: compare.quick: expected a mapping (overrides for a short run), got {q!r}")
        for key in q:
            if key not in QUICK_KEYS:
                raise UniTuneError(f"{src}: compare.quick.{key}: unknown key, expected one of {list(QUICK_KEYS)}")
        _overrides(q.get("overrides", {}), f"{src}: compare.quick.overrides")
    if quick:
        if not isinstance(q, dict):
            raise UniTuneError(f"{src}: --quick needs a compare.quick section (overrides for a short run)")
        quick_overrides = _overrides(q.get("overrides", {}), f"{src}: compare.quick.overrides")
        defaults.update({k: v for k, v in q.items() if k != "overrides"})
    all_overrides = [*quick_overrides, *overrides]
    raw = load_config_dict(config, all_overrides)
    raw.pop("compare", None)

    # The method, task and seed lists: command line, then compare.quick, then compare, then data.task.
    if methods is not None:
        methods = _check_names(list(methods), "--methods", METHODS)
    else:
        methods = _check_names(defaults.get("methods", list(METHODS)), f"{src}: compare.methods", METHODS)
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
    weights = str((out / "pretrain" / "backbone.safetensors").resolve()) if base.pretrain is not None else None
    task_runs = {}
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
        for split in ("train", "val", "trainval", "test"):  # indexed, not read: a missing list fails now
            split_set = build_dataset(run.data, split, None)
        split_set.verify_files()  # the test files are read after training: verified (not decoded) now
        task_runs[t] = run
    if "search" in methods:
        from unitune.retrain.train import check_init_source
        from unitune.search.stage import check_search_stage

        check_search_stage(task_runs[tasks[0]], out)
        check_init_source(task_runs[tasks[0]])
    elif any(m in SINGLE for m in methods):
        _budget(task_runs[tasks[0]])  # a malformed budget fails now, not after the pretraining
        _check_methods_fit(task_runs[tasks[0]], [m for m in methods if m in SINGLE])
    fingerprint = hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Plan(base, out, tasks, groups, seeds, methods, task_runs, fingerprint, quick=quick)


# ------------------------------------------------------------------------------ running the cells

def _dims(run: RunConfig):
    from unitune.engine.backbone import create_backbone
    from unitune.data import build_dataset
    from unitune.supernet import BackboneDims

    num_classes = build_dataset(run.data, "trainval", None).num_classes
    vit = create_backbone(run.model.backbone, num_classes, kwargs=run.model.kwargs, meta=True)
    return BackboneDims.from_model(vit), vit


def _budget(run: RunConfig) -> int | None:
    from unitune.supernet.budget import parse_budget

    if run.search.budget is None:
        return None
    dims, vit = _dims(run)
    head = {id(p) for p in vit.get_classifier().parameters()}
    frozen = sum(p.numel() for p in vit.parameters() if id(p) not in head)
    return parse_budget(run.search.budget, frozen, source=f"{run.source}: search.budget")


def _check_methods_fit(run: RunConfig, methods: Sequence[str]) -> None:
    """The single-method rows' methods (with the model-level ones reported with them) must fit
    the backbone (SSF folds only into a bias): refused now, not after the pretraining."""
    from unitune.supernet import SearchSpace, Subnet, check_vit
    from unitune.supernet.methods import METHODS as REGISTRY

    space = SearchSpace.from_dict(run.space)
    dims, vit = _dims(run)
    names = [g.name for g in REGISTRY.values() if g.name in methods or (g.site == "model" and g.report_key in methods)]
    check_vit(vit, sizes=Subnet.uniform(dims.depth, **{n: space.max_size(n) for n in names}))


def largest_uniform(method: str, run: RunConfig):
    """The one-method subnet, same size in every block, with the most parameters within the
    budget (without a budget: the largest); when even the smallest size is over budget, the
    smallest (the row's parameter count shows it)."""
    from unitune.supernet import SearchSpace, Subnet, count_params

    space = SearchSpace.from_dict(run.space)
    dims, _ = _dims(run)
    budget = _budget(run)
    from unitune.supernet.methods import METHODS

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
        raise UniTuneError(f"{run.source}: space.{method}: has no size above 0; drop {method!r} from the methods")
    fitting = [o for o in options if budget is None or o[0] <= budget]
    return (max(fitting, key=lambda o: o[0]) if fitting else min(options, key=lambda o: o[0]))[1]


def describe(subnet) -> str:
    parts = []
    for m in subnet.shown_methods():
        sizes = subnet.sizes(m)
        if not isinstance(sizes, tuple):  # a model-level method
            if sizes:
                parts.append(m)
        elif any(sizes):
            parts.append(f"{m} {sizes[0]}" if len(set(sizes)) == 1 else f"{m} {'/'.join(map(str, sizes))}")
    return "; ".join(parts) or "head only"


def full_finetune(run: RunConfig, out: Path, progress: bool = False) -> dict[str, Any]:
    """Every weight trainable, the retrain recipe, trainval, scored once on test after the last epoch."""
    from unitune.engine.backbone import create_backbone
    from unitune.data import build_dataset, build_loader, build_transform, resolve_data_config
    from unitune.engine.pretrain import pretrained_weights
    from unitune.engine.train import Criterion, build_optimizer, build_scheduler, evaluate, pick_device, seed_everything, \
        train_epoch

    cfg = run.retrain
    device = pick_device(run.device)
    seed_everything(cfg.seed)
    train_set = build_dataset(run.data, "trainval", None)
    num_classes = train_set.num_classes
    model = create_backbone(run.model.backbone, num_classes, pretrained=run.model.pretrained and not run.model.weights,
                            weights=pretrained_weights(run, out), kwargs=run.model.kwargs,
                            weights_label="model.weights" if run.pretrain is None else "pretrained backbone").to(device)
    for p in model.parameters():
        p.requires_grad_(True)
    data_config = resolve_data_config(model)
    train_set.transform = build_transform(data_config, train=True, cfg=run.data)
    loader = build_loader(train_set, run.data, train=True, seed=cfg.seed, device=device)
    optimizer = build_optimizer(model.named_parameters(), cfg)
    scheduler = build_scheduler(optimizer, cfg, loader.sampler.num_batches)
    criterion = Criterion(cfg, num_classes)
    step = 0
    for epoch in range(cfg.epochs):
        loader.sampler.set_epoch(epoch)
        _, step = train_epoch(model, loader, optimizer, scheduler, criterion, cfg, device, step,
                              f"full fine-tuning epoch {epoch + 1}/{cfg.epochs}", progress)
    # The test split is built and read only now, once, after the last epoch.
    test_set = build_dataset(run.data, "test", build_transform(data_config, train=False, cfg=run.data))
    # In fp32 whatever ``amp`` trained with, as retrain scores the PEFT rows: one precision per table.
    test = evaluate(model, build_loader(test_set, run.data, train=False, seed=cfg.seed, device=device), device,
                    num_classes, amp=False)
    trainable = sum(p.numel() for p in model.parameters())
    head = sum(p.numel() for p in model.get_classifier().parameters())
    return {"test_accuracy": test["accuracy"], "test_images": test["n"], "params": trainable - head,
            "params_with_head": trainable}


def run_cell(plan: Plan, task: str, method: str, seed: int, progress: bool = False) -> dict[str, Any]:
    """Train and score one cell; its JSON file is written (atomically) only once it is complete."""
    from unitune.retrain.train import CKPT_DIR, retrain
    from unitune.supernet import Subnet
    from unitune.engine.supernet_train import SUPERNET_FILE

    base = plan.task_runs[task]
    run = dataclasses.replace(base, retrain=dataclasses.replace(base.retrain, seed=seed),
                              raw={**base.raw, "retrain": {**base.raw.get("retrain", {}), "seed": seed}})
    out = plan.cell_dir(task, method, seed)
    out.mkdir(parents=True, exist_ok=True)
    started, cpu = time.perf_counter(), time.process_time()
    stage_seconds = None
    if method == "full":
        r = full_finetune(run, out, progress)
        params, with_head, sizes, images = r["params"], r["params_with_head"], "all weights", r["test_images"]
    else:
        if method == "search":
            search_dir = plan.search_dir(task)
            path = search_dir / "best_subnet.yaml"
            stage_seconds = read_json(search_dir / SEARCH_RESULT)["seconds"]
        else:
            subnet = Subnet.uniform(_dims(run)[0].depth) if method == "linear" else largest_uniform(method, run)
            path = subnet.save(out / "subnet.yaml")
        r = retrain(run, path, out, supernet_file=plan.search_dir(task) / SUPERNET_FILE if method == "search" else None,
                    resume=(out / CKPT_DIR / "state.pt").exists(), progress=progress, curves=False)
        params, with_head = r["params"]["trainable_params"], r["params"]["trainable_params_with_head"]
        sizes, images = describe(Subnet.load(path)), r["test_images"]
    row = {"task": task, "group": plan.groups[task], "method": method, "seed": seed,
           "test_accuracy": r["test_accuracy"], "test_images": images, "params": params,
           "params_with_head": with_head, "epochs": run.retrain.epochs,
           "seconds": round(time.perf_counter() - started, 2),
           "cpu_seconds": round(time.process_time() - cpu, 2), "sizes": sizes, "stage_seconds": stage_seconds,
           "fingerprint": plan.fingerprint}
    row = CellRecord(**row).to_json()  # the one record type every cell is read back through
    write_json_atomic(plan.cell_file(task, method, seed), row)
    return row


def _pretrain_stage(plan: Plan, progress: bool) -> dict[str, Any] | None:
    from unitune.engine.pretrain import PRETRAIN_DIR, WEIGHTS_FILE, pretrain

    if plan.base.pretrain is None:
        return None
    folder = plan.out / PRETRAIN_DIR
    result = folder / PRETRAIN_RESULT
    if (folder / WEIGHTS_FILE).is_file() and result.is_file():
        return read_json(result)
    started, cpu = time.perf_counter(), time.process_time()
    pretrain(plan.base, plan.out, progress=progress)
    log = [json.loads(ln) for ln in (folder / "log.jsonl").read_text().splitlines() if ln.strip()]
    data = plan.base.pretrain_data
    info = {"source": data.to_dict(), "epochs": plan.base.pretrain.epochs, "seconds": round(time.perf_counter() - started, 1),
            "cpu_seconds": round(time.process_time() - cpu, 1), "source_val_accuracy": log[-1]["val_acc"] if log else None}
    write_json_atomic(result, info)
    return info


def _search_stage(plan: Plan, task: str, progress: bool) -> dict[str, Any]:
    """Supernet on train, search on val, once per task: ``best_subnet.yaml`` for the search rows."""
    from unitune.search.stage import search_stage
    from unitune.engine.supernet_train import CKPT_DIR, SUPERNET_FILE, train_supernet

    folder = plan.search_dir(task)
    result = folder / SEARCH_RESULT
    if result.is_file():
        return read_json(result)
    run = plan.task_runs[task]
    started, cpu = time.perf_counter(), time.process_time()
    if run.search.needs_supernet and not (folder / SUPERNET_FILE).is_file():
        train_supernet(run, folder, resume=(folder / CKPT_DIR / "state.pt").exists(), progress=progress)
    supernet_seconds = time.perf_counter() - started
    found, written = search_stage(run, folder, progress=progress)
    if plan.quick:  # its plots too, the supernet's training curves included: the --quick numbers mean nothing
        from unitune.curves import CURVES_FILE

        pngs = {Path(p) for p in written.values() if Path(p).suffix == ".png"}
        pngs |= {folder / CURVES_FILE} if (folder / CURVES_FILE).is_file() else set()
        for png in sorted(pngs):
            stamp_quick(png)
    best = found.best_trial
    info = {"seconds": round(time.perf_counter() - started, 1), "cpu_seconds": round(time.process_time() - cpu, 1),
            "supernet_seconds": round(supernet_seconds, 1),
            "trials": found.n_complete, "best_val_accuracy": best.user_attrs["val_accuracy"],
            "params": best.user_attrs["n_params"]}
    write_json_atomic(result, info)
    return info


def _worker(job: tuple) -> Any:
    """One unit of work in a worker process (``--jobs`` > 1): a search stage or a cell."""
    import torch

    plan, kind, args, threads = job
    torch.set_num_threads(threads)
    if kind == "search":
        return _search_stage(plan, *args, progress=False)
    return run_cell(plan, *args, progress=False)


def _check_folder(plan: Plan) -> None:
    """A run folder belongs to one config: refuse to mix cells of another one into its table.
    Every finished cell is read (checked) now, before anything is written or trained: a damaged
    one fails the rerun at once, not in the report after hours of work."""
    meta = plan.out / META_FILE
    if meta.exists() or meta.is_symlink():
        saved = read_json(meta)  # a folder, FIFO or broken link there: one line naming it
        if not isinstance(saved, dict) or not isinstance(saved.get("fingerprint"), str):
            got = type(saved).__name__ if not isinstance(saved, dict) else f"'fingerprint' {saved.get('fingerprint')!r}"
            raise UniTuneError(f"{meta}: expected the JSON object compare writes (with a 'fingerprint' string), "
                               f"got {got}; use another --out or remove the file")
        if saved["fingerprint"] != plan.fingerprint:
            raise UniTuneError(f"{meta}: this folder holds a comparison of another config (or of --quick / "
                               f"overrides that differ); use another --out or remove the folder")
    for cell in plan.cells:
        if plan.cell_file(*cell).exists() or plan.cell_file(*cell).is_symlink():
            plan.read_cell(*cell)


def _check_checkpoints(plan: Plan) -> None:
    """The checkpoints a rerun would resume (a cell's retrain, a task's supernet) must load: a
    damaged one is named now, before any cell starts (with ``--jobs``, others would run beside it)."""
    from unitune.retrain.train import CKPT_DIR
    from unitune.engine.supernet_train import CKPT_DIR as SUPERNET_CKPT
    from unitune.engine.train import load_checkpoint

    folders = [plan.cell_dir(*c) / CKPT_DIR for c in plan.cells if not plan.cell_file(*c).is_file()]
    if "search" in plan.methods:
        folders += [plan.search_dir(t) / SUPERNET_CKPT for t in plan.tasks
                    if not (plan.search_dir(t) / SEARCH_RESULT).is_file()]
    for folder in folders:
        load_checkpoint(folder)  # None when there is none; a damaged one is a one-line error


def run_compare(plan: Plan, jobs: int = 1, progress: bool = True) -> dict[str, Any]:
    """Pretrain (once), search (once per task), then every missing cell; then the CSV, table and plot."""
    from tqdm import tqdm

    _check_folder(plan)
    _check_checkpoints(plan)
    plan.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(plan.out / META_FILE, {"fingerprint": plan.fingerprint, "config": plan.base.source,
                                             "tasks": list(plan.tasks), "seeds": list(plan.seeds),
                                             "methods": list(plan.methods)})
    for t, run in plan.task_runs.items():  # the resolved config of each task, for `unitune retrain --config`
        write_yaml_atomic(plan.out / "tasks" / t / "config.yaml", run.raw)
    started = time.perf_counter()
    pre = _pretrain_stage(plan, progress)
    if pre is not None and progress:
        print(f"pretrain: source val accuracy {pre['source_val_accuracy']:.4f} in {pre['seconds']} s")

    searches = [t for t in plan.tasks if "search" in plan.methods]
    todo = [c for c in plan.cells if not plan.cell_file(*c).is_file()]
    if progress:
        print(f"compare: {_count(len(plan.cells), 'cell')} ({_count(len(plan.tasks), 'task')} x "
              f"{_count(len(plan.methods), 'method')} x {_count(len(plan.seeds), 'seed')}), "
              f"{len(plan.cells) - len(todo)} already complete")
    bar = tqdm(total=len(plan.cells), initial=len(plan.cells) - len(todo), desc="compare", unit="cell",
               disable=not progress)
    if jobs <= 1:  # task by task, so an interrupted suite leaves whole tasks done
        for t in plan.tasks:
            if t in searches:
                bar.set_postfix_str(f"{t}: supernet + search")
                _search_stage(plan, t, progress=False)
            for cell in [c for c in todo if c[0] == t]:
                bar.set_postfix_str("/".join(map(str, cell)))
                run_cell(plan, *cell, progress=False)
                bar.update()
    else:
        import concurrent.futures as cf
        import multiprocessing as mp

        from unitune.voice import install

        # each worker prints warnings in the CLI's voice, other packages' repeats once per worker
        with cf.ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"), initializer=install) as pool:
            try:
                for f in cf.as_completed([pool.submit(_worker, (plan, "search", (t,), 1)) for t in searches]):
                    f.result()
                for f in cf.as_completed([pool.submit(_worker, (plan, "cell", c, 1)) for c in todo]):
                    f.result()
                    bar.update()
            except BaseException:
                # The first failure stops the comparison: cells not yet started are not started
                # (the running ones finish and keep their complete results, as one job would).
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    bar.close()
    report = write_report(plan, pretrain_info=pre)
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


# ---------------------------------------------------------------------------------- the report

QUICK_NOTE = "--quick: a smoke test; these numbers mean nothing"
MARKERS = "osD^vPX<>hp*"  # hollow and distinct, so methods that land on one point both show


def _count(n: int, word: str) -> str:
    """``1 seed``, ``3 seeds``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _pm(mean_std: tuple[float, float], n: int, fmt: str = ".1f") -> str:
    """``mean ± std`` of ``n`` values; the mean alone when ``n`` is 1 (one value has no spread:
    a ``± 0.0`` there read as a measured zero spread)."""
    mean, std = mean_std
    return f"{mean:{fmt}} ± {std:.1f}" if n >= 2 else f"{mean:{fmt}}"


def summarise(rows: list[dict[str, Any]], tasks: Sequence[str], groups: dict[str, str], seeds: Sequence[int],
              methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per method: mean +- std over seeds per task, per group, and of the mean of group means
    (computed per seed, then averaged: its std is the seed-to-seed spread of the headline number).
    ``params`` (no head) is the mean over tasks and seeds; ``params_per_task`` and
    ``params_with_head`` are per task (each task's head has its own size: their mean is no model's)."""
    by = {(r["task"], r["method"], r["seed"]): r for r in rows}
    used = {groups[t] for t in tasks}
    present = [g for g in GROUP_ORDER if g in used] + sorted(used - set(GROUP_ORDER))
    out = {}
    for m in methods:
        per_task = {t: _mean_std([100 * by[t, m, s]["test_accuracy"] for s in seeds]) for t in tasks}
        per_group, headline = {}, []
        for g in present:
            members = [t for t in tasks if groups[t] == g]
            per_group[g] = _mean_std([statistics.fmean(100 * by[t, m, s]["test_accuracy"] for t in members)
                                      for s in seeds])
        for s in seeds:
            headline.append(statistics.fmean(
                statistics.fmean(100 * by[t, m, s]["test_accuracy"] for t in tasks if groups[t] == g) for g in present))
        out[m] = {"tasks": per_task, "groups": per_group, "mean_of_groups": _mean_std(headline),
                  "params": statistics.fmean(by[t, m, s]["params"] for t in tasks for s in seeds),
                  "params_per_task": {t: statistics.fmean(by[t, m, s]["params"] for s in seeds) for t in tasks},
                  "params_with_head": {t: statistics.fmean(by[t, m, s]["params_with_head"] for s in seeds)
                                       for t in tasks},
                  "seconds": statistics.fmean(by[t, m, s]["seconds"] for t in tasks for s in seeds)}
    return out


def head_sizes(rows: list[dict[str, Any]], tasks: Sequence[str]) -> dict[str, list[int]]:
    """Per task, the classification head's parameter count (with head minus without), as every
    row of the task trained it: one value per task, unless rows disagree."""
    return {t: sorted({int(r["params_with_head"]) - int(r["params"]) for r in rows if r["task"] == t})
            for t in tasks}


def format_table(summary: dict[str, dict[str, Any]], tasks: Sequence[str], groups: dict[str, str],
                 n_seeds: int) -> str:
    """The VTAB-style table; a spread (± std over seeds) only with two seeds or more."""
    first = next(iter(summary.values()))
    group_names = list(first["groups"])
    head = ["method", "params (no head)"] + [f"{t} ({groups[t][:4]}.)" for t in tasks] + \
        [f"{g} mean" for g in group_names] + ["mean of groups"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, s in summary.items():
        differ = len(set(s["params_per_task"].values())) > 1  # the search picks per task
        cells = [m, f"{s['params']:,.0f}" + (" (mean)" if differ else "")]
        cells += [_pm(s["tasks"][t], n_seeds) for t in tasks]
        cells += [_pm(s["groups"][g], n_seeds) for g in group_names]
        cells.append(f"**{_pm(s['mean_of_groups'], n_seeds)}**")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_notes(seeds: Sequence[int], epochs: int, source: str, heads: dict[str, list[int]],
                 summary: dict[str, dict[str, Any]], pretrain_info: dict[str, Any] | None = None) -> list[str]:
    """What the table's numbers are: seeds, epochs, parameter counts and heads, the pretraining."""
    seeds = list(seeds)
    spread = (f"mean ± std over {_count(len(seeds), 'seed')} {seeds}" if len(seeds) >= 2
              else f"one seed ({seeds[0]}), so no spread")
    notes = [f"Test accuracy % after the last epoch, {spread}; {_count(epochs, 'epoch')} on "
             f"trainval for every row ({source})."]
    differ = [m for m, s in summary.items() if len(set(s["params_per_task"].values())) > 1]
    notes.append("params: trainable parameters without the classification head" +
                 (f" (mean over tasks for {', '.join(differ)}: its count differs per task)" if differ else "") +
                 "; every row also trains the task's head: " +
                 ", ".join(f"{t} {'/'.join(f'{h:,}' for h in hs)}" for t, hs in heads.items()) + ".")
    if pretrain_info:
        notes.append(f"Backbone pretrained once on {pretrain_info['source'].get('source')} "
                     f"(source val accuracy {100 * pretrain_info['source_val_accuracy']:.1f}%, "
                     f"{pretrain_info['seconds']} s).")
    return notes


def accuracy_figure(summary: dict[str, dict[str, Any]], title: str, n_seeds: int, quick: bool = False):
    """The mean of group means against trainable parameters (no head: heads differ per task), one
    legend entry per method; the figure is returned unsaved, for :func:`save_plot` and the tests."""
    import math

    from unitune.search.plots import new_figure

    fig = new_figure(figsize=(7.2, 4.4))
    ax = fig.add_subplot(111)
    for i, (m, s) in enumerate(summary.items()):
        mean, std = s["mean_of_groups"]
        ax.errorbar(s["params"], mean, yerr=std if n_seeds >= 2 else None, fmt=MARKERS[i % len(MARKERS)],
                    markersize=8, markerfacecolor="none", markeredgewidth=1.5, color=f"C{i % 10}", capsize=4, label=m)
    positive = [s["params"] for s in summary.values() if s["params"] > 0]
    if len(positive) < len(summary):  # the linear probe trains 0 (head aside): linear up to a decade, log above
        low = math.floor(math.log10(min(positive))) if positive else 0
        high = math.floor(math.log10(max(positive))) if positive else 0
        ax.set_xscale("symlog", linthresh=10.0 ** low)
        ax.set_xticks([0] + [10.0 ** k for k in range(low, high + 1)])  # the stock ticks crowd 0
    else:
        ax.set_xscale("log")
    ax.set_xlabel("trainable parameters without the head (mean over tasks)")
    ax.set_ylabel("test accuracy %, mean of group means" + ("\n(bars: ± std over seeds)" if n_seeds >= 2 else ""))
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False, title="method")
    if quick:
        fig.suptitle(QUICK_NOTE, color="red", fontweight="bold", fontsize=10)
    return fig


def stamp_quick(path: Path) -> None:
    """Write the --quick note in red in a band above a PNG drawn elsewhere (the search stage's
    plots), and as its ``unitune`` text chunk. Called once per drawing: the search redraws them."""
    from matplotlib import font_manager
    from PIL import Image, ImageDraw, ImageFont
    from PIL.PngImagePlugin import PngInfo

    from unitune.io import atomic_path

    with Image.open(path) as img:
        plot = img.convert("RGB")
    band = 30
    out = Image.new("RGB", (plot.width, plot.height + band), "white")
    out.paste(plot, (0, band))
    font = ImageFont.truetype(font_manager.findfont("DejaVu Sans:bold"), 15)
    ImageDraw.Draw(out).text((out.width // 2, band // 2), QUICK_NOTE, fill=(220, 0, 0), font=font, anchor="mm")
    info = PngInfo()
    info.add_text("unitune", QUICK_NOTE)
    with atomic_path(path) as tmp:
        out.save(tmp, format="PNG", pnginfo=info)


def save_plot(summary: dict[str, dict[str, Any]], path: Path, title: str, n_seeds: int, quick: bool = False) -> None:
    from unitune.search.plots import save_figure

    save_figure(accuracy_figure(summary, title, n_seeds, quick), path)  # bbox "tight": no clipped label


def paired_vs_single(rows: list[dict[str, Any]], tasks: Sequence[str], seeds: Sequence[int],
                     methods: Sequence[str]) -> list[dict[str, Any]]:
    """``search`` minus each single method, paired by task and seed (the same retrain seed, data
    and test split on both sides), the strongest single method first.

    "Strongest" is the one with the highest mean test accuracy over every task and seed: picked on
    test, which favours the baseline, never the search, so it is a fair bar to clear.
    """
    if "search" not in methods:
        return []
    by = {(r["task"], r["method"], r["seed"]): 100 * r["test_accuracy"] for r in rows}
    pairs = [(t, s) for t in tasks for s in seeds]
    out = []
    for m in [m for m in SINGLE if m in methods]:
        diffs = [by[t, "search", s] - by[t, m, s] for t, s in pairs]
        mean, std = _mean_std(diffs)
        out.append({"method": m, "baseline_mean": statistics.fmean(by[t, m, s] for t, s in pairs),
                    "mean_diff": mean, "std_diff": std, "n": len(diffs),
                    "wins": sum(d > 0 for d in diffs), "ties": sum(d == 0 for d in diffs),
                    "per_task": {t: statistics.fmean(by[t, "search", s] - by[t, m, s] for s in seeds)
                                 for t in tasks}})
    return sorted(out, key=lambda r: -r["baseline_mean"])


def search_trust(plan: Plan) -> dict[str, dict[str, Any]]:
    """Per task, what the search's re-rank measured (``best_subnet.yaml``'s meta): Kendall's tau
    between the supernet's inherited val accuracy and stand-alone val accuracy, and the pick;
    ``fitness`` says why a search without a re-rank had none."""
    from unitune.io import read_yaml

    out: dict[str, dict[str, Any]] = {}
    for t in plan.tasks:
        path = plan.search_dir(t) / "best_subnet.yaml"
        if "search" in plan.methods and path.is_file():
            from unitune.supernet import Subnet

            meta = read_yaml(path).get("meta") or {}
            out[t] = {k: meta.get(k) for k in ("kendall_tau", "kendall_n", "kendall_ci95", "inherited_val_accuracy",
                                               "standalone_val_accuracy", "n_params")}
            out[t]["pick"] = describe(Subnet.load(path))
            out[t]["fitness"] = plan.task_runs[t].search.fitness
    return out


def format_paired(paired: list[dict[str, Any]], trust: dict[str, dict[str, Any]]) -> str:
    lines = []
    if paired:
        n = paired[0]["n"]  # pairs (task x seed), the same for every method
        lines += ["Search minus each single method, paired by task and seed (test accuracy points; the "
                  "strongest single method first):", "",
                  f"| vs | its mean | search - it{', mean ± std' if n >= 2 else ''} | search wins | " +
                  " | ".join(paired[0]["per_task"]) + " |", "|" + "---|" * (4 + len(paired[0]["per_task"]))]
        for r in paired:
            lines.append(f"| {r['method']} | {r['baseline_mean']:.1f} | {_pm((r['mean_diff'], r['std_diff']), n, '+.1f')} "
                         f"| {r['wins']}/{r['n']} | " + " | ".join(f"{v:+.1f}" for v in r["per_task"].values()) + " |")
    if trust:
        lines += ["", "The search's pick per task, and how far the supernet's ranking held (its re-rank, on val: "
                  "Kendall tau between inherited and stand-alone val accuracy):", "",
                  "| task | tau (n, 95% CI) | pick's inherited val | pick's stand-alone val | pick's params | pick |",
                  "|---|---|---|---|---|---|"]
        for t, v in trust.items():
            acc = [f"{100 * v[k]:.1f}" if v.get(k) is not None else "-"
                   for k in ("inherited_val_accuracy", "standalone_val_accuracy")]
            params = f"{v['n_params']:,}" if v.get("n_params") is not None else "-"
            lines.append(f"| {t} | {_tau_text(v)} | {acc[0]} | {acc[1]} | {params} | {v['pick']} |")
    return "\n".join(lines) + "\n" if lines else ""


def _tau_text(v: dict[str, Any]) -> str:
    """The re-rank's tau, or why there is none: no re-rank ran (its figures are absent from the
    pick's meta), or one ran and tau is undefined (search/rerank.py's ``kendall``)."""
    if v.get("kendall_n") is None:
        if v.get("fitness") == "standalone":
            return "n/a (stand-alone fitness: no supernet ranking to check)"
        return "n/a (no re-rank)"
    n = v["kendall_n"]
    if v.get("kendall_tau") is None:
        why = "fewer than 3 subnets" if n < 3 else "the inherited or the stand-alone scores all equal"
        return f"undefined (n={n}: {why})"
    ci = v.get("kendall_ci95")
    ci = f", 95% CI [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""
    return f"{v['kendall_tau']:.2f} (n={n}{ci})"


def write_report(plan: Plan, pretrain_info: dict[str, Any] | None = None) -> dict[str, Any]:
    rows = [plan.read_cell(*c) for c in plan.cells]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(plan.out / CSV_FILE, buf.getvalue())
    summary = summarise(rows, plan.tasks, plan.groups, plan.seeds, plan.methods)
    table = format_table(summary, plan.tasks, plan.groups, len(plan.seeds))
    if plan.quick:  # first, in the file and on stdout: nobody should quote these
        table = f"**{QUICK_NOTE}** (the config's compare.quick settings).\n\n" + table
    notes = format_notes(plan.seeds, plan.base.retrain.epochs, plan.base.source, head_sizes(rows, plan.tasks),
                         summary, pretrain_info)
    paired = paired_vs_single(rows, plan.tasks, plan.seeds, plan.methods)
    trust = search_trust(plan)
    write_text_atomic(plan.out / TABLE_FILE, table + "\n" + "\n".join(notes) + "\n\n" + format_paired(paired, trust))
    save_plot(summary, plan.out / PLOT_FILE,
              f"{plan.base.name}: {_count(len(plan.tasks), 'task')}, {_count(len(plan.seeds), 'seed')}",
              len(plan.seeds), plan.quick)
    return {"summary": summary, "table": table, "paired": paired, "trust": trust, "csv": plan.out / CSV_FILE, "table_file": plan.out / TABLE_FILE,
            "plot": plan.out / PLOT_FILE, "pretrain": pretrain_info}
