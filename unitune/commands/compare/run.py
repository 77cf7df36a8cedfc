"""Running a comparison: the pretraining (once), the search (once per task), with ``compare.tune``
one tuning study per task and row (:mod:`.tuning`), every cell (one task x row x seed, each
trained and scored by itself, in worker processes with ``--jobs``)."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from unitune.engine.config import RunConfig, apply_recipe
from unitune.engine.context import RunContext, RunLayout
from unitune.errors import UniTuneError
from unitune.io import read_json, write_json_atomic, write_yaml_atomic
from .plan import META_FILE, PRETRAIN_RESULT, SEARCH_RESULT, CellRecord, Plan, largest_uniform
from .report import describe, plural, stamp_quick, write_report


def full_finetune(run: RunConfig | RunContext, out: Path, progress: bool = False) -> dict[str, Any]:
    """Every weight trainable, the retrain recipe, trainval, scored once on test after the last
    epoch: retrain's full mode (:func:`unitune.retrain.train.retrain` with ``full=True``), resumed
    from its checkpoint when one is there."""
    from unitune.retrain.train import retrain

    ctx = RunContext.of(run, Path(out))
    r = retrain(ctx, None, out, full=True, resume=ctx.layout.retrain_state.exists(), progress=progress, curves=False)
    return {"test_accuracy": r["test_accuracy"], "test_images": r["test_images"],
            "params": r["params"]["trainable_params"], "params_with_head": r["params"]["trainable_params_with_head"]}


def cell_run(plan: Plan, task: str, seed: int, recipe: dict[str, Any] | None = None) -> RunConfig:
    """The task's run config for one seed's cell, with ``recipe`` (a tuned lr / weight decay /
    multipliers) over its retrain section, in the recipe and in the raw config its fingerprints read."""
    base = plan.task_runs[task]
    changes = {"seed": seed, **(recipe or {})}
    retrain = apply_recipe(dataclasses.replace(base.retrain, seed=seed), recipe, task) if recipe else \
        dataclasses.replace(base.retrain, seed=seed)
    return dataclasses.replace(base, retrain=retrain, raw={**base.raw, "retrain": {**base.raw.get("retrain", {}), **changes}})


def run_cell(plan: Plan, task: str, method: str, seed: int, progress: bool = False) -> dict[str, Any]:
    """Train and score one cell; its JSON file is written (atomically) only once it is complete."""
    from unitune.retrain.train import retrain
    from unitune.supernet import Subnet

    from .tuning import read_tune_info

    info = read_tune_info(plan, task, method) if plan.tune is not None else None
    # full fine-tuning's tuned recipe goes into its config (a subnet row's is its subnet file's meta.recipe)
    run = cell_run(plan, task, seed, info["recipe"] if method == "full" and info else None)
    out = plan.cell_dir(task, method, seed)
    out.mkdir(parents=True, exist_ok=True)
    ctx = plan.context(task).moved(out, run)  # the task's space, shapes and budget; this seed's config
    started, cpu = time.perf_counter(), time.process_time()
    stage_seconds = None
    if method == "full":
        r = full_finetune(ctx, out, progress)
        params, with_head, sizes, images = r["params"], r["params_with_head"], "all weights", r["test_images"]
    elif method == "soup":  # the search row's pick, souped over its best recipes (retrain/soup.py)
        from unitune.retrain.soup import soup, soup_recipes

        subnet = Subnet.load(info["subnet_file"])
        r = soup(ctx, subnet, soup_recipes(read_json(info["tune_result"]), plan.tune.soup), out, progress=progress)
        params, with_head = r["params"]["trainable_params"], r["params"]["trainable_params_with_head"]
        sizes, images = describe(subnet) + f"; soup of {len(r['chosen'])}", r["test_images"]
    else:
        if info is not None:  # the tuned pick: its structure, and its recipe in meta.recipe
            path = Path(info["subnet_file"])
            if method == "search":
                stage_seconds = read_json(plan.search_dir(task) / SEARCH_RESULT)["seconds"]
        elif method == "search":
            search_dir = plan.search_dir(task)
            path = RunLayout(search_dir).best_subnet
            stage_seconds = read_json(search_dir / SEARCH_RESULT)["seconds"]
        else:
            subnet = Subnet.uniform(ctx.depth) if method == "linear" else \
                largest_uniform(method, ctx, plan.classes(task))
            path = subnet.save(out / "subnet.yaml")
        r = retrain(ctx, path, out, supernet_file=RunLayout(plan.search_dir(task)).supernet if method == "search" else None,
                    resume=ctx.layout.retrain_state.exists(), progress=progress, curves=False)
        params, with_head = r["params"]["trainable_params"], r["params"]["trainable_params_with_head"]
        sizes, images = describe(Subnet.load(path)), r["test_images"]
    row = {"task": task, "group": plan.groups[task], "method": method, "seed": seed,
           "test_accuracy": r["test_accuracy"], "test_images": images, "params": params,
           "params_with_head": with_head, "epochs": run.retrain.epochs,
           "seconds": round(time.perf_counter() - started, 2),
           "cpu_seconds": round(time.process_time() - cpu, 2), "sizes": sizes, "stage_seconds": stage_seconds,
           "fingerprint": plan.fingerprint,
           "recipe": json.dumps(info["recipe"], sort_keys=True) if info else None,
           "tune_cpu_seconds": info["cpu_seconds"] if info else None}
    row = CellRecord(**row).to_json()  # the one record type every cell is read back through
    write_json_atomic(plan.cell_file(task, method, seed), row)
    return row


def _pretrain_stage(plan: Plan, progress: bool) -> dict[str, Any] | None:
    from unitune.engine.pretrain import pretrain

    if plan.base.pretrain is None:
        return None
    layout = RunLayout(plan.out)
    result = layout.pretrain_dir / PRETRAIN_RESULT
    if layout.pretrain_weights.is_file() and result.is_file():
        return read_json(result)
    started, cpu = time.perf_counter(), time.process_time()
    pretrain(plan.base, plan.out, progress=progress)
    log = [json.loads(ln) for ln in layout.pretrain_log.read_text().splitlines() if ln.strip()]
    data = plan.base.pretrain_data
    info = {"source": data.to_dict(), "epochs": plan.base.pretrain.epochs, "seconds": round(time.perf_counter() - started, 1),
            "cpu_seconds": round(time.process_time() - cpu, 1), "source_val_accuracy": log[-1]["val_acc"] if log else None}
    write_json_atomic(result, info)
    return info


def _search_stage(plan: Plan, task: str, progress: bool) -> dict[str, Any]:
    """Supernet on train, search on val, once per task: ``best_subnet.yaml`` for the search rows."""
    from unitune.search.stage import search_stage
    from unitune.engine.supernet_train import train_supernet

    folder = plan.search_dir(task)
    result = folder / SEARCH_RESULT
    if result.is_file():
        return read_json(result)
    ctx = plan.context(task).moved(folder)  # one per task: the supernet and the search share it
    run = ctx.run
    started, cpu = time.perf_counter(), time.process_time()
    if run.search.needs_supernet and not ctx.layout.supernet.is_file():
        train_supernet(ctx, resume=ctx.layout.supernet_state.exists(), progress=progress)
    supernet_seconds = time.perf_counter() - started
    found, written = search_stage(ctx, progress=progress)
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
    if kind == "tune":
        from .tuning import tune_row

        return tune_row(plan, *args, progress=False)
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
    from unitune.engine.train import load_checkpoint

    folders = [RunLayout(plan.cell_dir(*c)).retrain_ckpt for c in plan.cells if not plan.cell_file(*c).is_file()]
    if "search" in plan.methods:
        folders += [RunLayout(plan.search_dir(t)).supernet_ckpt for t in plan.tasks
                    if not (plan.search_dir(t) / SEARCH_RESULT).is_file()]
    for folder in folders:
        load_checkpoint(folder)  # None when there is none; a damaged one is a one-line error


def _needs(plan: Plan, kind: str, task: str, row: str) -> set[tuple]:
    """What a tune or a cell waits for: the task's search (the search row's structures), the
    row's tuning (the soup's: the search row's)."""
    from .tuning import warm_rows

    if kind == "tune":  # the search row's study starts from the single rows' (warm_start)
        return {("search", task), *(("tune", task, r) for r in warm_rows(plan))} if row == "search" else set()
    if plan.tune is not None:
        return {("tune", task, "search" if row == "soup" else row)}
    return {("search", task)} if row == "search" else set()


def _run_jobs(plan: Plan, pool, searches, tunes, todo, bar) -> None:
    """Every search, tune and cell in worker processes, each started as soon as what it needs is
    done (a task's tunings do not wait for another task's search, nor its cells for another
    row's tuning)."""
    import concurrent.futures as cf

    done = {("search", t) for t in plan.tasks if t not in searches}
    done |= {("tune", t, m) for t in plan.tasks for m in plan.methods if (t, m) not in tunes}
    waiting = [("search", (t,), set()) for t in searches]
    waiting += [("tune", (t, m), _needs(plan, "tune", t, m)) for t, m in tunes]
    waiting += [("cell", c, _needs(plan, "cell", c[0], c[1])) for c in todo]
    running: dict = {}
    while waiting or running:
        for job in [j for j in waiting if j[2] <= done]:
            waiting.remove(job)
            running[pool.submit(_worker, (plan, job[0], job[1], 1))] = job
        if not running:  # cannot happen: every need is a job of this run or already done
            raise RuntimeError(f"compare: jobs wait on nothing running: {waiting[:3]}")
        finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
        for f in finished:
            kind, args, _ = running.pop(f)
            f.result()
            done.add((kind, *args))
            if kind == "cell":
                bar.update()


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

    from .tuning import TUNED_ROWS_SKIP, tune_row

    searches = [t for t in plan.tasks if "search" in plan.methods]
    todo = [c for c in plan.cells if not plan.cell_file(*c).is_file()]
    # compare.tune: one study per (task, row) that still has a cell to run, after the task's search
    tunes = [] if plan.tune is None else \
        [(t, m) for t in plan.tasks for m in plan.methods if m not in TUNED_ROWS_SKIP
         and any(c[0] == t and (c[1] == m or (m == "search" and c[1] == "soup")) for c in todo)]
    if progress:
        print(f"compare: {plural(len(plan.cells), 'cell')} ({plural(len(plan.tasks), 'task')} x "
              f"{plural(len(plan.methods), 'method')} x {plural(len(plan.seeds), 'seed')}), "
              f"{len(plan.cells) - len(todo)} already complete")
    bar = tqdm(total=len(plan.cells), initial=len(plan.cells) - len(todo), desc="compare", unit="cell",
               disable=not progress)
    if jobs <= 1:  # task by task, so an interrupted suite leaves whole tasks done
        for t in plan.tasks:
            if t in searches:
                bar.set_postfix_str(f"{t}: supernet + search")
                _search_stage(plan, t, progress=False)
            for row in sorted((m for task, m in tunes if task == t), key=lambda m: m == "search"):  # search last
                bar.set_postfix_str(f"{t}/{row}: tune")
                tune_row(plan, t, row)
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
                _run_jobs(plan, pool, searches, tunes, todo, bar)
            except BaseException:
                # The first failure stops the comparison: cells not yet started are not started
                # (the running ones finish and keep their complete results, as one job would).
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    bar.close()
    report = write_report(plan, pretrain_info=pre)
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report
