"""``unitune run``: pretrain (if configured) → supernet → search → retrain → export → evaluate.

This module sits on top, beside the CLI. Each stage is skipped when its output is already
complete and resumed when it was interrupted, so running the same command again after a crash
picks up where it stopped: a finished supernet is never retrained, a study keeps its trials.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from unitune.engine.config import RunConfig, check_run_records, record_run
from unitune.engine.context import SUMMARY_FILE, RunContext, RunLayout
from unitune.errors import UniTuneError
from unitune.io import check_no_outside_links, read_json, write_json_atomic

__all__ = ["SUMMARY_FILE", "best_story", "format_summary", "run_all"]


def run_all(run: RunConfig | RunContext, out: str | Path | None = None, progress: bool = True,
            headers: bool | None = None) -> dict[str, Any]:
    """Every stage into ``out``; the summary. ``progress``: bars (or, off a terminal, a line per
    epoch); ``headers`` (default: ``progress``): one line as each stage starts, kept by ``--quiet``.
    One :class:`~unitune.engine.context.RunContext` is built for the run and passed to every stage."""
    headers = progress if headers is None else headers
    from unitune.data import build_dataset
    from unitune.engine.pretrain import pretrain
    from unitune.retrain.evaluate import evaluate_export
    from unitune.retrain.train import check_init_source, retrain
    from unitune.search.stage import check_search_stage, finished_search, search_stage
    from unitune.engine.supernet_train import train_supernet

    ctx = RunContext.of(run, out)
    run, out, layout = ctx.run, ctx.out, ctx.layout
    seconds: dict[str, float | None] = {}
    skipped: list[str] = []
    # Before the first stage: what later stages would reject after hours of training. The data
    # splits are indexed (no image decoded) and the search settings checked on a meta backbone.
    # A link inside the run folder that leads out of it (plots -> /elsewhere) would be written through.
    check_no_outside_links(out)
    for split in ("train", "val", "trainval", "test"):
        split_set = build_dataset(run.data, split, None)
    # The test split is read once, after the retrain's last epoch: its files are verified now.
    split_set.verify_files()
    check_search_stage(ctx)
    check_init_source(run)
    check_run_records(run, out)
    earlier = _earlier_seconds(out)

    def stage(name: str, done: bool, work, why: str = "complete") -> Any:
        if done:
            # A resumed run reports what the stage cost when it ran (recorded as each stage ends).
            seconds[name] = earlier.get(name)
            skipped.append(name)
            if headers:
                print(f"[{name}] already complete, skipped" if why == "complete" else f"[{name}] skipped ({why})",
                      flush=True)
            return None
        if headers:
            print(f"[{name}]", flush=True)
        started = time.perf_counter()
        value = work()
        seconds[name] = round(time.perf_counter() - started, 1)
        record_run(run, out)
        # Recorded now, so a run killed in a later stage still knows what this one took.
        write_json_atomic(layout.summary, {"config": run.source, "complete": False, "seconds": seconds,
                                           "skipped": skipped})
        return value

    if run.pretrain is not None:
        stage("pretrain", layout.pretrain_weights.is_file(), lambda: pretrain(ctx, progress=progress))
    standalone = not run.search.needs_supernet
    stage("supernet", layout.supernet.is_file() or standalone,
          lambda: train_supernet(ctx, resume=layout.supernet_state.exists(), progress=progress),
          why="search.fitness is standalone" if standalone else "complete")
    # A search an earlier run finished (its trials, its pick, the re-rank the config asks for) is
    # skipped like any complete stage: its recorded time stays, and the re-rank is not redone.
    finished = finished_search(ctx)
    searched = stage("search", finished is not None, lambda: search_stage(ctx, progress=progress))
    result = finished if finished is not None else searched[0]
    exported = layout.export_manifest.is_file() and layout.retrain_result.is_file()
    stage("retrain", exported, lambda: retrain(ctx, layout.best_subnet, out, resume=layout.retrain_state.exists(),
                                               progress=progress))
    evaluation = stage("evaluate", False, lambda: evaluate_export(layout.export, run.data, device=run.device))

    retrained = read_json(layout.retrain_result)
    if abs(evaluation["accuracy"] - retrained["test_accuracy"]) > 1e-9:
        raise UniTuneError(f"{layout.export}: the export scores {evaluation['accuracy']:.4f} on test, "
                           f"but retrain recorded {retrained['test_accuracy']:.4f}")
    from unitune.curves import write_curves
    from unitune.search import best_ties

    write_curves(out)  # every stage's, skipped ones too: their logs stay in the folder
    best = result.best_trial  # after the re-rank: its winner, as best_subnet.yaml holds
    ties = best_ties(result.study)
    params = retrained["params"]
    story = best_story(result.study, best)
    summary = {
        "config": run.source,
        "budget": result.study.user_attrs["budget"],
        "trainable_params": params["trainable_params"],
        "trainable_params_with_head": params["trainable_params_with_head"],
        "per_method": params["per_method"],
        "search_trials": result.n_complete,
        # "Best" told one way (as the study's note, the plots and the README tell it): the search's
        # best val accuracy (the dashboard's star), then the pick and the figure that decided it.
        **story,
        # Which trial best_subnet.yaml took, the pick (search/ranking.py's one rule: the re-rank's
        # winner, else Optuna's best_trial, what the dashboard marks), and the trials that tie with
        # it on val accuracy, fewest parameters first.
        "search_best_trial": best.number,
        "search_best_params": best.user_attrs["n_params"],
        "search_ties": [[t.number, t.user_attrs["n_params"]] for t in ties],
        # search.rerank picked it by stand-alone val accuracy (then the ties above do not decide).
        "search_reranked": (result.study.user_attrs.get("rerank") or {}).get("winner") == best.number,
        "test_accuracy": retrained["test_accuracy"],
        "test_images": retrained["test_images"],
        "retrain_epochs": run.retrain.epochs,
        "search_fitness": run.search.fitness,
        "export": str(layout.export),
        "complete": True,
        "seconds": seconds,
        "skipped": skipped,
        "artefacts": _artefacts(out, run, evaluation),
        "next": _next_commands(out, run),
        # Resume state only: a complete run never reads it again.
        "checkpoints": [str(d) + "/" for d in (layout.supernet_ckpt, layout.retrain_ckpt) if d.is_dir()],
    }
    write_json_atomic(layout.summary, summary)
    return summary


def best_story(study, pick) -> dict[str, Any]:
    """The summary's figures about "best": the search's best val accuracy and its trial, the pick's
    val accuracy in the search, and (after a re-rank) the stand-alone val accuracy that decided it,
    its epochs and how far the supernet's ranking agreed (Kendall tau)."""
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    top = max(complete, key=lambda t: (float(t.values[0]), -t.number))
    story: dict[str, Any] = {
        "search_best_val_accuracy": float(top.values[0]),
        "search_best_val_trial": top.number,
        "pick_val_accuracy": float(pick.values[0]),
        "pick_standalone_val_accuracy": None,
    }
    record = study.user_attrs.get("rerank") or {}
    if record.get("winner") == pick.number:
        row = next(r for r in record["candidates"] if r["trial"] == pick.number)
        kendall = record.get("kendall") or {}
        story.update(pick_standalone_val_accuracy=row["standalone_val_accuracy"], rerank_epochs=record["epochs"],
                     rerank_candidates=len(record["candidates"]), rerank_tau=kendall.get("tau"),
                     rerank_tau_ci95=kendall.get("ci95"))
    return story


def _earlier_seconds(out: Path) -> dict[str, float]:
    """Stage durations a previous run recorded in ``run_summary.json`` (numbers only)."""
    path = RunLayout(out).summary
    if not path.is_file():
        return {}
    try:
        recorded = read_json(path).get("seconds") or {}
    except (UniTuneError, AttributeError):  # unreadable: the durations are only for show
        return {}
    return {k: v for k, v in recorded.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _artefacts(out: Path, run: RunConfig, evaluation: dict[str, Any]) -> dict[str, str]:
    """What the run wrote, by what a person looks for (files that exist only)."""
    layout = RunLayout(out)
    found = {
        "best subnet": layout.best_subnet,
        "study (Optuna)": layout.study_db,
        "trial table": layout.trials_csv,  # and trials.md: every trial, the pick marked
        "plots": layout.plots,
        "training curves": layout.curves,
        "tensorboard": layout.tensorboard,
        "export": layout.export,
        "evaluation": Path(evaluation["out"]),
        "summary": layout.summary,
    }
    return {k: str(v) + ("/" if v.is_dir() else "") for k, v in found.items() if v.exists()}


def _next_commands(out: Path, run: RunConfig) -> list[str]:
    layout = RunLayout(out)
    export = layout.export
    return [
        f"unitune dashboard {out}",
        f"unitune evaluate {export} --split test",
        f"unitune predict {export} IMAGE...",
        f"unitune inspect --config {run.source} --subnet {layout.best_subnet}",
        f"unitune export-subnet --storage {out} --top 5 --out {out / 'top5.yaml'}",
    ]


def _times(s: dict[str, Any]) -> list[str]:
    """``pretrain 12.3 s``, ``supernet 40.1 s (earlier run)``: at most three stages a line, so a
    120-column terminal never wraps the line."""
    skipped = set(s.get("skipped") or ())
    parts = []
    for name, v in s["seconds"].items():
        if isinstance(v, (int, float)):
            parts.append(f"{name} {v:,.1f} s" + (" (earlier run)" if name in skipped else ""))
        else:  # skipped, and no duration was ever recorded (a summary of an older unitune)
            parts.append(f"{name} skipped")
    return [", ".join(parts[i:i + 3]) for i in range(0, len(parts), 3)]


def format_summary(s: dict[str, Any]) -> str:
    per_method = ", ".join(f"{m} {n:,}" for m, n in s["per_method"].items())
    times = _times(s)
    artefacts = [f"  {k:<20} {v}" for k, v in (s.get("artefacts") or {}).items()]
    nxt = [f"  {c}" for c in s.get("next") or ()]
    return "\n".join(line for line in [
        "── unitune run summary " + "─" * 40,
        f"budget                 {s['budget']:,} PEFT parameters (head excluded)",
        f"parameters used        {s['trainable_params']:,} ({s['trainable_params_with_head']:,} with head)",
        f"per method             {per_method}",
        _search_line(s),
        *_pick_lines(s),
        *_test_lines(s),
        f"time per stage         {times[0] if times else ''}",
        *[f"                       {t}" for t in times[1:]],
        "artefacts" if artefacts else "", *artefacts,
        f"  {'checkpoints':<20} {', '.join(s['checkpoints'])} (only for --resume; safe to delete now)"
        if s.get("checkpoints") else "",
        "next" if nxt else "", *nxt,
    ] if line)


def _search_line(s: dict[str, Any]) -> str:
    line = f"search                 {s['search_trials']} trials, best val accuracy {s['search_best_val_accuracy']:.4f}"
    if "search_best_val_trial" in s:  # (a summary of an older unitune has the pick's figure there)
        line += f" (trial {s['search_best_val_trial']}, the dashboard's star)"
    return line


def _pick_lines(s: dict[str, Any]) -> list[str]:
    """The pick and the figure that decided it; ties; what a low Kendall tau means for this run."""
    if "search_best_trial" not in s:  # a summary written before unitune recorded it
        return []
    pad = " " * 23
    pick = f"pick                   trial {s['search_best_trial']} ({s['search_best_params']:,} parameters)"
    if s.get("search_reranked") and s.get("pick_standalone_val_accuracy") is not None:
        lines = [pick + f", taken by the re-rank: stand-alone val {s['pick_standalone_val_accuracy']:.4f},",
                 f"{pad}the best of {s['rerank_candidates']} subnets trained {s['rerank_epochs']} epochs on train "
                 f"(its search val {s['pick_val_accuracy']:.4f})"]
        from unitune.search.rerank import LOW_TAU

        tau = s.get("rerank_tau")
        if tau is None or tau < LOW_TAU:  # what the re-rank's warning means for this run
            shown = "undefined" if tau is None else f"{tau:.2f}"
            lines += [f"supernet ranking       Kendall tau {shown}: the search's val ranked these subnets close to "
                      "randomly,",
                      f"{pad}so it did not decide the pick: trial {s['search_best_trial']} was taken by its "
                      "stand-alone val"]
        return lines
    if s.get("search_reranked"):  # a summary of an older unitune
        return [pick + ", the re-rank's winner (best stand-alone val accuracy, search.rerank)"]
    line = pick + ", the best val accuracy (Optuna's best_trial)"
    ties = s.get("search_ties") or []
    if len(ties) > 1:
        smallest = min(ties, key=lambda t: (t[1], t[0]))
        line += (f"; {len(ties)} trials tie on val accuracy, Optuna's best_trial is taken "
                 f"(the smallest is trial {smallest[0]}, {smallest[1]:,})")
    return [line]


def _test_lines(s: dict[str, Any]) -> list[str]:
    """The test accuracy, and why it differs from the val figures above."""
    line = f"test accuracy          {s['test_accuracy']:.4f} on {s['test_images']} images (retrained, last epoch)"
    if "retrain_epochs" not in s:  # a summary of an older unitune
        return [line]
    pad = " " * 23
    search = ("a short stand-alone training" if s.get("search_fitness") == "standalone"
              else "the supernet's shared weights")
    lines = [line + "; it differs from val", f"{pad}by design: the search's val uses {search};"]
    if s.get("pick_standalone_val_accuracy") is not None:
        lines.append(f"{pad}the re-rank's val follows {s['rerank_epochs']} epochs of training on train;")
    return lines + [f"{pad}test follows {s['retrain_epochs']} epochs of retraining on train+val, scored once on test"]
