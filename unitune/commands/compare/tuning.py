"""Equally tuned rows (``compare.tune``): every row's recipe tuned the same way before its cells.

A comparison in which one row is tuned and the others run at a default measures the tuning, not
the method (DESIGN, "What decides PEFT accuracy"). With a ``compare.tune`` section every row, the
linear probe and full fine-tuning included, gets one :func:`unitune.search.tune.tune` study per
task: the same number of trials, the same epochs (the pruner's fidelities), the same
ranges (full fine-tuning's own, :class:`~unitune.search.tune.TuneRanges`) and the same
noise-aware selection, all on train and val, once per task (the seeds vary the retraining, as
for the search). The candidates:

- ``linear``: the head alone (lr and weight decay);
- a single-method row: its subnet (the same largest-within-budget size as untuned);
- ``full``: every weight, the backbone's rate and the head's multiplier;
- ``search``: the searched structure, the search study's next best structures (``structures``
  in all) and every single-method row's subnet, the structure a parameter of the study too, so
  the row can end up a single method where that is what val says. With ``warm_start`` (the
  default) its study starts from every single-method row's finished trials (imported, not run
  again: :func:`unitune.search.tune.import_trials`; their CPU-s counted in this row's cost) and
  then runs ``trials`` of its own on the searched structures, in turn, the first on each at the
  rates the single rows picked for its families (:func:`unitune.search.tune.started_recipe`); its
  finalists include every one the single rows' selections scored. Without it, 8 trials spread
  over 7 candidates tuned each less than the single rows did (RESULTS, the DINOv2 run on count:
  10 points below tuned LoRA).
- ``soup``: no study of its own: the greedy soup (:mod:`unitune.retrain.soup`) of the search
  row's picked structure with ``soup`` recipes: the best its study found, then the pick's at
  neighbouring learning rates (:func:`unitune.retrain.soup.soup_recipes`).

Each row's tuning cost (CPU seconds, training images) and choice (structure, recipe, selection
mean and standard error) go into its cells and the report's table.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from unitune.engine.context import RunLayout
from unitune.errors import UniTuneError
from unitune.io import read_json, write_json_atomic

from .plan import Plan

TUNE_INFO = "tune_info.json"
# rows whose recipe comes from a study of their own (the soup re-uses the search row's)
TUNED_ROWS_SKIP = ("soup",)


def tune_folder(plan: Plan, task: str, row: str) -> Path:
    return plan.out / "tasks" / task / row


def candidates(plan: Plan, task: str, row: str) -> list[tuple[str, Any]]:
    """The row's candidate structures (module docstring)."""
    from unitune.search.tune import FULL, load_candidates
    from unitune.supernet import Subnet

    from .plan import largest_uniform

    ctx = plan.context(task)
    if row == "full":
        return [(FULL, None)]
    if row == "linear":
        return [("linear", Subnet.uniform(ctx.depth))]
    if row != "search":
        return [(row, largest_uniform(row, ctx, plan.classes(task)))]
    from unitune.search.export import export_subnets, load_subnets, run_folder_storage

    search_dir = plan.search_dir(task)
    # the searched pick (best_subnet.yaml), then the study's next best, as `export-subnet --top` lists them
    found = load_candidates([str(RunLayout(search_dir).best_subnet)], ctx)
    if plan.tune.structures > 1:
        top = search_dir / "tune_structures.yaml"
        export_subnets(run_folder_storage(str(search_dir)), out=top, top_k=plan.tune.structures)
        found += [(None, s) for s, _ in load_subnets(top, depth=ctx.depth)]
    singles = [(m, largest_uniform(m, ctx, plan.classes(task))) for m in single_rows(plan)]
    out: list[tuple[str, Any]] = []
    seen = set()
    for label, subnet in [*((None, s) for _, s in found), *singles]:  # each structure once, the searched first
        key = repr(subnet.to_dict()["subnet"])
        if key in seen or (label is None and len(out) == plan.tune.structures):
            continue
        seen.add(key)
        out.append((label or f"search#{len(out)}", subnet))
    return out


def tune_row(plan: Plan, task: str, row: str, progress: bool = False) -> dict[str, Any]:
    """Tune ``row`` on ``task`` (once; a rerun reads ``tune_info.json``): the study, its pick and
    its cost. Worker-safe: each (task, row) has a folder of its own."""
    from unitune.search.tune import PRUNER, Selection, TuneRanges, picked_scores, tune

    folder = tune_folder(plan, task, row)
    info_file = folder / TUNE_INFO
    found = candidates(plan, task, row)
    # what the study was asked: a search row's candidates follow --methods, which the fingerprint leaves out
    asked = [[label, None if s is None else s.to_dict()["subnet"]] for label, s in found]
    if info_file.is_file():
        info = read_json(info_file)
        if info.get("candidates", asked) == asked:
            return read_tune_info(plan, task, row)
    cfg = plan.tune
    ctx = plan.context(task).moved(folder)
    started = time.perf_counter()
    result = tune(ctx, found, folder, trials=cfg.trials, epochs=cfg.epochs,
                  ranges=TuneRanges(**{k: tuple(v) for k, v in cfg.ranges.items()}), seed=cfg.seed,
                  selection=Selection(finalists=cfg.finalists, splits=cfg.splits, kfold=cfg.kfold), progress=progress,
                  prior=prior_studies(plan, task, found) if row == "search" and cfg.warm_start else ())
    chosen = picked_scores(result)
    picked = dict(found)[result["structure"]]
    sizes = "all weights" if picked is None else picked.describe()
    info = {"row": row, "task": task, "structure": result["structure"], "sizes": sizes, "recipe": result["recipe"],
            "subnet_file": result["subnet_file"], "val_accuracy": result["val_accuracy"],
            "selection_mean": chosen["mean"] if chosen else None, "selection_se": chosen["se"] if chosen else None,
            "trials": len(result["trials"]), "imported": result["imported"],
            "train_images": result["train_images"], "candidates": asked,
            "pruner": PRUNER,
            # the study's own count (every trial and selection score, earlier runs' too), not this call's
            "seconds": round(time.perf_counter() - started, 1), "cpu_seconds": round(result["cpu_seconds"], 1),
            "tune_result": str(folder / "tune" / "tune_result.json")}
    write_json_atomic(info_file, info)
    return info


def single_rows(plan: Plan) -> list[str]:
    """The single-method rows (one registered method at one size; not the soup)."""
    from .plan import method_rows

    return method_rows([r for r in plan.methods if r not in TUNED_ROWS_SKIP])


def warm_rows(plan: Plan) -> list[str]:
    """The rows whose studies start the search row's (``warm_start``): the single-method rows."""
    if plan.tune is None or not plan.tune.warm_start or "search" not in plan.methods:
        return []
    return single_rows(plan)


def prior_studies(plan: Plan, task: str, found: list[tuple[str, Any]]) -> list:
    """The single-method rows' finished studies on ``task``, each under the search row's label of
    its structure (a searched structure equal to a single method's keeps the searched label)."""
    from unitune.search.tune import TUNE_DIR, Prior

    label_of = {repr(s.to_dict()["subnet"]): label for label, s in found if s is not None}
    prior = []
    for row in warm_rows(plan):
        (_, subnet), = candidates(plan, task, row)
        info = read_tune_info(plan, task, row)
        prior.append(Prior(label_of[repr(subnet.to_dict()["subnet"])], tune_folder(plan, task, row) / TUNE_DIR / "study.db",
                           read_json(info["tune_result"])["study"]))
    return prior


def read_tune_info(plan: Plan, task: str, row: str) -> dict[str, Any]:
    """A finished row's tuning, for its cells (the soup reads the search row's), with the paths of
    its files rebuilt from this run's folder (``subnet_file``, ``tune_result``): a run folder
    moved, copied or resumed from another working directory reads its own files."""
    folder = tune_folder(plan, task, "search" if row in TUNED_ROWS_SKIP else row)
    path = folder / TUNE_INFO
    if not path.is_file():
        raise UniTuneError(f"{path}: the row {row!r} of task {task!r} has not been tuned; rerun compare")
    from unitune.search.tune import TUNE_DIR, TUNED_SUBNET

    info = read_json(path)
    info["tune_result"] = str(folder / TUNE_DIR / "tune_result.json")
    if info.get("subnet_file") is not None:
        info["subnet_file"] = str(folder / TUNE_DIR / TUNED_SUBNET)
    return info


__all__ = ["TUNE_INFO", "candidates", "prior_studies", "read_tune_info", "tune_folder", "tune_row", "warm_rows"]
