"""``unitune run``: pretrain (if configured) → supernet → search → retrain → export → evaluate.

This module sits on top, beside the CLI. Each stage is skipped when its output is already
complete and resumed when it was interrupted, so running the same command again after a crash
picks up where it stopped: a finished supernet is never retrained, a study keeps its trials.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .config import RunConfig
from .errors import UniTuneError
from .io import read_json, write_json_atomic

SUMMARY_FILE = "run_summary.json"


def run_all(run: RunConfig, out: str | Path, progress: bool = True) -> dict[str, Any]:
    from unitune.data import build_dataset
    from unitune.pretrain import PRETRAIN_DIR, WEIGHTS_FILE, pretrain
    from unitune.retrain.evaluate import evaluate_export
    from unitune.retrain.train import CKPT_DIR as RETRAIN_CKPT
    from unitune.retrain.train import EXPORT_DIR, RESULT_FILE, retrain
    from unitune.search.stage import check_search_stage, search_stage
    from unitune.supernet.train import CKPT_DIR as SUPERNET_CKPT
    from unitune.supernet.train import SUPERNET_FILE, train_supernet

    out = Path(out)
    seconds: dict[str, float | str] = {}
    # Before the first stage: what later stages would reject after hours of training. The data
    # splits are indexed (no image decoded) and the search settings checked on a meta backbone.
    for split in ("train", "val", "trainval", "test"):
        build_dataset(run.data, split, None)
    check_search_stage(run, out)

    def stage(name: str, done: bool, work, why: str = "complete") -> Any:
        if done:
            seconds[name] = f"skipped ({why})"
            if progress:
                print(f"[{name}] skipped ({why})")
            return None
        if progress:
            print(f"[{name}]")
        started = time.perf_counter()
        value = work()
        seconds[name] = round(time.perf_counter() - started, 1)
        return value

    if run.pretrain is not None:
        stage("pretrain", (out / PRETRAIN_DIR / WEIGHTS_FILE).is_file(), lambda: pretrain(run, out, progress))
    # The standalone fitness trains each trial's subnet itself: no supernet to train.
    standalone = run.search.fitness == "standalone"
    stage("supernet", (out / SUPERNET_FILE).is_file() or standalone,
          lambda: train_supernet(run, out, resume=(out / SUPERNET_CKPT / "state.pt").exists(), progress=progress),
          why="search.fitness is standalone" if standalone else "complete")
    result, _ = stage("search", False, lambda: search_stage(run, out, progress=progress))
    exported = (out / EXPORT_DIR / "unitune.json").is_file() and (out / RESULT_FILE).is_file()
    stage("retrain", exported, lambda: retrain(run, out / "best_subnet.yaml", out,
                                               resume=(out / RETRAIN_CKPT / "state.pt").exists(), progress=progress))
    evaluation = stage("evaluate", False, lambda: evaluate_export(out / EXPORT_DIR, run.data, device=run.device))

    retrained = read_json(out / RESULT_FILE)
    if abs(evaluation["accuracy"] - retrained["test_accuracy"]) > 1e-9:
        raise UniTuneError(f"{out / EXPORT_DIR}: the export scores {evaluation['accuracy']:.4f} on test, "
                           f"but retrain recorded {retrained['test_accuracy']:.4f}")
    best = result.best_trial
    params = retrained["params"]
    summary = {
        "config": run.source,
        "budget": result.study.user_attrs["budget"],
        "trainable_params": params["trainable_params"],
        "trainable_params_with_head": params["trainable_params_with_head"],
        "per_method": params["per_method"],
        "search_trials": result.n_complete,
        "search_best_val_accuracy": best.user_attrs["val_accuracy"],
        "test_accuracy": retrained["test_accuracy"],
        "test_images": retrained["test_images"],
        "export": str(out / EXPORT_DIR),
        "seconds": seconds,
    }
    write_json_atomic(out / SUMMARY_FILE, summary)
    return summary


def format_summary(s: dict[str, Any]) -> str:
    per_method = ", ".join(f"{m} {n:,}" for m, n in s["per_method"].items())
    times = ", ".join(f"{k} {v}s" if isinstance(v, (int, float)) else f"{k} {v}" for k, v in s["seconds"].items())
    return "\n".join([
        "── unitune run summary " + "─" * 40,
        f"budget                 {s['budget']:,} PEFT parameters (head excluded)",
        f"parameters used        {s['trainable_params']:,} ({s['trainable_params_with_head']:,} with head)",
        f"per method             {per_method}",
        f"search                 {s['search_trials']} trials, best val accuracy {s['search_best_val_accuracy']:.4f}",
        f"test accuracy          {s['test_accuracy']:.4f} on {s['test_images']} images (retrained, last epoch)",
        f"export                 {s['export']}",
        f"time per stage         {times}",
    ])
