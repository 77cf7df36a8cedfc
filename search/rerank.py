"""Final selection by stand-alone training, and how far to trust the supernet (issue 15).

Inherited-weight accuracy on a small validation set can misjudge subnets (RESULTS.md §4 and the
issue: Kendall tau 0.23 between inherited and retrained accuracy). ``search.rerank: {top_k: K,
epochs: E}`` therefore trains, from the pretrained backbone with fresh PEFT weights and the
``retrain`` recipe cut to E epochs, the K best trials plus the single-method seeds of the study,
on the **train** split, and scores each on the **val** split. The test split is never built:
selection by test accuracy would make the reported test figure optimistic.

The winner (highest stand-alone val accuracy; ties: higher inherited accuracy, then fewer
parameters) is written as ``best_subnet.yaml``, its ``meta`` holding both figures. Kendall's tau
between inherited and stand-alone val accuracy (``scipy.stats.kendalltau``: tau, p-value, n, and
a 95% paired-bootstrap percentile interval from ``scipy.stats.bootstrap``) is stored on the study
as the user attribute ``rerank`` (with every candidate's figures; optuna-dashboard shows study
attributes) and plotted in ``plots/rerank_tau.png``. A low tau prints a warning: the supernet
ranks subnets poorly, so its search is close to a random one.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import optuna

from unitune.engine.config import RerankConfig, RunConfig, rerank_settings
from unitune.engine.context import RERANK_PLOT, RunContext, RunLayout
from unitune.errors import UniTuneError

from .export import trial_meta, trial_subnet
from .notes import mark_best
from .ranking import RERANK_ATTR, ranked_trials
from .seeds import SINGLE_SOURCE

_logger = logging.getLogger("unitune.search")

# On by default (issue 15): the supernet's inherited accuracy alone picked worse subnets than
# the single methods it was meant to beat; five short stand-alone trainings plus the single
# methods cost little next to the supernet, and they measure how far to trust it (tau).
DEFAULT_RERANK = dataclasses.asdict(RerankConfig())
LOW_TAU = 0.3  # below this (or a CI reaching 0) the supernet's ranking is not to be trusted
PLOT = RERANK_PLOT


def check_rerank(value: Any, where: str = "search.rerank") -> tuple[int, int]:
    """(top_k, epochs) from the config value, checked as the config's :class:`RerankConfig` (a
    missing key takes its default: on, top 5, 5 epochs); None or top_k 0 turn re-ranking off."""
    return rerank_settings(value, where)


def candidates(study: optuna.Study, top_k: int) -> list[optuna.trial.FrozenTrial]:
    """The ``top_k`` best COMPLETE trials, then the single-method seeds not among them."""
    ranked = ranked_trials(study, reranked=False)
    chosen = ranked[:top_k]
    numbers = {t.number for t in chosen}
    chosen += [t for t in ranked if t.user_attrs.get("source") == SINGLE_SOURCE and t.number not in numbers]
    return chosen


def kendall(x: list[float], y: list[float]) -> dict[str, Any]:
    """Kendall's tau-b of paired figures with its p-value, n and a 95% bootstrap interval."""
    from scipy import stats

    n = len(x)
    result: dict[str, Any] = {"n": n, "tau": None, "p_value": None, "ci95": None}
    if n < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return result  # undefined: too few points, or a constant
    tau, p = stats.kendalltau(x, y)
    result.update(tau=float(tau), p_value=float(p))

    def statistic(a, b):
        t = stats.kendalltau(a, b)[0]
        return 0.0 if math.isnan(t) else t  # a resample with a constant side carries no ranking

    boot = stats.bootstrap((np.asarray(x), np.asarray(y)), statistic, paired=True, vectorized=False,
                           n_resamples=999, method="percentile", random_state=0)
    result["ci95"] = [float(boot.confidence_interval.low), float(boot.confidence_interval.high)]
    return result


def standalone_val_accuracy(run: RunConfig | RunContext, out: Path, subnet, epochs: int, progress: bool = False) -> float:
    """Train ``subnet`` from the pretrained backbone for ``epochs`` on the train split; its val accuracy."""
    accuracy = float("nan")
    for _, accuracy in standalone_epochs(run, out, subnet, epochs, progress):
        pass
    return accuracy


def standalone_epochs(run: RunConfig | RunContext, out: Path, subnet, epochs: int, progress: bool = False,
                      cost: dict | None = None, full: bool = False, split: Any = None,
                      on_model: Callable[[Any], None] | None = None) -> Iterator[tuple[int, float]]:
    """Train ``subnet`` as :func:`standalone_val_accuracy` does, yielding ``(epoch, val accuracy)``
    after each epoch (the search's ``standalone`` fitness reports them to Optuna's pruner).
    ``cost`` (if given) counts the ``train_images`` and ``val_images_seen`` so far. ``full``: every
    weight of the backbone trains (``subnet`` empty), as retrain's full mode does.

    ``split``: None trains on the train split and judges on val; ``(train_indices, val_indices)``
    cuts train and val pooled (:class:`~unitune.data.JoinedDataset`, train first) instead, one of
    the tuner's repeated splits or folds; ``"trainval"`` trains on trainval and judges nothing (the val
    accuracy yielded is NaN). The test split is never built. ``on_model(model)`` is called once the
    model is built (a caller that keeps the trained weights, :mod:`unitune.retrain.soup`)."""
    from unitune.data import JoinedDataset, build_dataset, build_loader, build_transform, resolve_data_config
    from unitune.engine.subnet_model import build_subnet_model
    from unitune.engine.train import (Criterion, build_optimizer, build_scheduler, evaluate, plain_family,
                                      seed_everything, train_epoch)

    ctx = RunContext.of(run, out)
    run = ctx.run
    cfg = dataclasses.replace(run.retrain, epochs=epochs)
    device = ctx.device
    seed_everything(cfg.seed)
    if split is None:
        train_set, val_set = build_dataset(run.data, "train", None), build_dataset(run.data, "val", None)
    elif isinstance(split, str) and split == "trainval":
        train_set, val_set = build_dataset(run.data, "trainval", None), None
    else:
        pool = JoinedDataset([build_dataset(run.data, "train", None), build_dataset(run.data, "val", None)])
        train_set, val_set = pool.subset(split[0]), pool.subset(split[1])
    num_classes = train_set.num_classes
    model = build_subnet_model(ctx, subnet, num_classes, device, out, "pretrained", None)
    data_config = resolve_data_config(model.vit)
    train_set.transform = build_transform(data_config, train=True, cfg=run.data)
    loader = build_loader(train_set, run.data, train=True, seed=cfg.seed, device=device)
    val_loader = None
    if val_set is not None:
        val_set.transform = build_transform(data_config, train=False, cfg=run.data)
        val_loader = build_loader(val_set, run.data, train=False, seed=cfg.seed, device=device)
    if full:  # as retrain's full mode: every weight of the timm model, timm's weight-decay rule
        model.requires_grad_(True)
        optimizer = build_optimizer(model.vit.named_parameters(), cfg, family_of=plain_family(model.vit))
    else:
        optimizer = build_optimizer(model.trainable_named_parameters(), cfg, model.no_weight_decay(),
                                    model.param_family)
    if on_model is not None:
        on_model(model)
    scheduler = build_scheduler(optimizer, cfg, loader.sampler.num_batches)
    criterion = Criterion(cfg, num_classes)
    cost = {} if cost is None else cost
    step = 0
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        _, step = train_epoch(model, loader, optimizer, scheduler, criterion, cfg, device, step,
                              f"stand-alone epoch {epoch + 1}/{epochs}", False)
        cost["train_images"] = cost.get("train_images", 0) + len(train_set)
        accuracy = float("nan")
        if val_loader is not None:
            result = evaluate(model, val_loader, device, num_classes, cfg.amp)
            cost["val_images_seen"] = cost.get("val_images_seen", 0) + result["n"]
            accuracy = float(result["accuracy"])
        yield epoch + 1, accuracy


def score_key(run: RunConfig | RunContext | None, out: Path, epochs: int) -> str:
    """A digest of everything a stand-alone score depends on: the retrain recipe at ``epochs``
    (lr, seed, schedule, ...), the data, model and space sections (as a retrain checkpoint's
    resume check reads them) and the bytes of the backbone weights it starts from. The re-rank
    re-uses a stored score only under the same key. (The supernet is not in it: stand-alone
    training starts from the pretrained backbone, never from the supernet's weights.)"""
    import hashlib
    import json

    if isinstance(run, RunContext):
        run = run.run
    if not isinstance(run, RunConfig):  # the tests' stand-ins (no run): the epochs are all there is
        return f"epochs={epochs}"
    from unitune.engine.pretrain import pretrained_weights
    from unitune.engine.subnet_model import retrain_fingerprint

    what = retrain_fingerprint(run)
    what["retrain"] = {**what["retrain"], "epochs": epochs}
    weights = pretrained_weights(run, out)
    if weights and Path(weights).is_file():
        digest = hashlib.sha256()
        with open(weights, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        what["weights_sha256"] = digest.hexdigest()
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def rerank(run: RunConfig | RunContext, out: str | os.PathLike, study: optuna.Study, top_k: int, epochs: int,
           progress: bool = False, train=standalone_val_accuracy) -> dict[str, Any]:
    """Re-rank the study's best trials by stand-alone val accuracy; write ``best_subnet.yaml`` and
    ``plots/rerank_tau.png``; store and return the figures. ``train(run, out, subnet, epochs)``
    gives a subnet's stand-alone val accuracy (the tests pass a stand-in)."""
    out = Path(out)
    chosen = candidates(study, top_k)
    if not chosen:
        raise UniTuneError(f"study {study.study_name!r}: has no complete trial to re-rank")
    from .study import study_encoding

    encoding = study_encoding(study)
    backbone = study.user_attrs.get("backbone")
    # A rerun (a resumed `unitune run`, more trials added) trains only candidates it has not
    # trained yet with the same recipe: the stand-alone figures are deterministic given all that
    # score_key covers. Another retrain.lr, seed, data or backbone trains every candidate anew.
    key = score_key(run, out, epochs)
    earlier = study.user_attrs.get(RERANK_ATTR) or {}
    known = ({r["trial"]: r["standalone_val_accuracy"] for r in earlier.get("candidates", [])}
             if earlier.get("score_key") == key else {})
    rows = []
    for t in chosen:
        subnet = trial_subnet(t, encoding, backbone)
        acc = known[t.number] if t.number in known else train(run, out, subnet, epochs, progress)
        if progress:  # one line per candidate (the trainings are short: no bar of their own)
            print(f"[re-rank] {len(rows) + 1}/{len(chosen)}  trial {t.number}  inherited val "
                  f"{float(t.values[0]):.4f}  stand-alone val {acc:.4f}", file=sys.stderr, flush=True)
        rows.append({"trial": t.number, "inherited_val_accuracy": float(t.values[0]), "standalone_val_accuracy": acc,
                     "n_params": t.user_attrs.get("n_params"), "single_method": t.user_attrs.get("single_method")})
    stats = kendall([r["inherited_val_accuracy"] for r in rows], [r["standalone_val_accuracy"] for r in rows])
    best = max(rows, key=lambda r: (r["standalone_val_accuracy"], r["inherited_val_accuracy"],
                                    -(r["n_params"] or 0), -r["trial"]))
    record = {"top_k": top_k, "epochs": epochs, "score_key": key, "split_trained": "train", "split_scored": "val",
              "kendall": stats, "winner": best["trial"], "candidates": rows}
    study.set_user_attr(RERANK_ATTR, record)

    winner = next(t for t in chosen if t.number == best["trial"])
    meta = {**trial_meta(study, winner), "selection": f"re-ranked: top-{top_k} + single methods, {epochs} epochs",
            "inherited_val_accuracy": best["inherited_val_accuracy"],
            "standalone_val_accuracy": best["standalone_val_accuracy"],
            "kendall_tau": stats["tau"], "kendall_n": stats["n"], "kendall_ci95": stats["ci95"]}
    winner_subnet = trial_subnet(winner, encoding, backbone)
    winner_subnet.save(RunLayout(out).best_subnet, meta=meta)
    mark_best(study, winner, winner_subnet, None)  # the dashboard's study note names the new pick
    plot_rerank(rows, stats, RunLayout(out).rerank_plot, winner=best["trial"])

    tau, ci = stats["tau"], stats["ci95"]
    if tau is None:
        _warn(f"re-rank: Kendall tau between inherited and stand-alone val accuracy is undefined (n={stats['n']}; "
              "fewer than 3 subnets, or one side constant): nothing shows how far to trust the supernet. Re-rank "
              "more subnets (search.rerank.top_k), train longer (search.rerank.epochs, supernet.epochs) or use a "
              "larger val set.")
    elif tau < LOW_TAU:
        _warn(f"re-rank: Kendall tau between the supernet's inherited val accuracy and stand-alone val accuracy "
              f"is {tau:.2f} (95% CI {_ci_text(ci)}, n={stats['n']}): the supernet ranks subnets poorly, so its "
              "search is close to a random one. For this run: trial "
              f"{best['trial']} was taken by its stand-alone val accuracy {best['standalone_val_accuracy']:.4f}, "
              f"the best of the {len(rows)} re-ranked subnets, not by the search's val. Train the supernet longer "
              "(supernet.epochs) or use a larger val set, or search without the supernet (search.fitness: "
              "standalone).")
    elif ci is not None and ci[0] <= 0:
        _warn(f"re-rank: Kendall tau {tau:.2f} (95% CI {_ci_text(ci)}, n={stats['n']}): too few subnets to show "
              "that the supernet ranks them better than chance; re-rank more (search.rerank.top_k) or use a "
              "larger val set.")
    return record


def forget_rerank(study: optuna.Study) -> bool:
    """With re-ranking off, an earlier run's winner must not outlive it (newer trials may beat
    it): the plain rule decides again. True if there was one. (Optuna cannot delete a user
    attribute; None reads as "no re-rank".)"""
    if not study.user_attrs.get(RERANK_ATTR):
        return False
    study.set_user_attr(RERANK_ATTR, None)
    return True


def _warn(text: str) -> None:
    # Wrapped: a warning reads on an 80- to 120-column terminal and in a log file alike.
    _logger.warning(textwrap.fill(text, width=100, subsequent_indent="  "))


def _ci_text(ci: list[float] | None) -> str:
    return "undefined" if ci is None else f"{ci[0]:.2f} to {ci[1]:.2f}"


def plot_rerank(rows: list[dict], stats: dict, path: Path, winner: int | None = None) -> Path:
    from .plots import save_figure

    path.parent.mkdir(parents=True, exist_ok=True)
    return save_figure(rerank_figure(rows, stats, winner), path)


MARKERS = "osD^vPX<>hp"  # hollow and distinct: candidates on one point all show


def rerank_figure(rows: list[dict], stats: dict, winner: int | None = None):
    """Inherited against stand-alone val accuracy, one legend entry per candidate (labels beside
    the points overlapped) and the pick ringed; returned unsaved, for the tests."""
    from .plots import new_figure

    fig = new_figure(figsize=(6.4, 4.5))
    ax = fig.add_subplot(111)
    for i, r in enumerate(rows):
        label = f"#{r['trial']}" + (f" {r['single_method']}" if r["single_method"] else "")
        ax.scatter(r["inherited_val_accuracy"], r["standalone_val_accuracy"], s=45, marker=MARKERS[i % len(MARKERS)],
                   facecolors="none", edgecolors=f"C{i % 10}", linewidths=1.5, label=label)
    pick = next((r for r in rows if r["trial"] == winner), None)
    if pick is not None:
        ax.scatter(pick["inherited_val_accuracy"], pick["standalone_val_accuracy"], s=320, marker="o",
                   facecolors="none", edgecolors="black", linewidths=1.2,
                   label=f"pick: #{winner} (the re-rank's winner)")
    tau = "undefined" if stats["tau"] is None else f"{stats['tau']:.2f}"
    ax.set_title(f"Kendall tau {tau} (n={stats['n']})")
    ax.set_xlabel("inherited val accuracy (supernet)")
    ax.set_ylabel("stand-alone val accuracy (re-rank)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False, fontsize=8,
              title="trial (single-method seeds named)", title_fontsize=8, ncol=1 + len(rows) // 16)
    return fig
