"""The search stage of a run: the trained supernet as fitness, an Optuna study, and its outputs
(``best_subnet.yaml``, ``plots/``) in the run folder. Running it again joins the same study.
With ``search.rerank: {top_k: K, epochs: E}`` the final pick is re-ranked by stand-alone
training (:mod:`.rerank`)."""

from __future__ import annotations

import dataclasses
import logging
import warnings
from pathlib import Path
from typing import Any, Sequence

from optuna.trial import TrialState

from unitune.engine.config import RunConfig
from unitune.engine.context import RunContext
from unitune.errors import UniTuneError
from unitune.supernet import BackboneDims, Subnet, check_vit

from .export import best_trial, trial_subnet, write_outputs
from .fitness import StandaloneFitness, SupernetFitness
from .pruning import check_fitness_pruner
from .plots import save_plots
from .rerank import check_rerank, forget_rerank, rerank, score_key
from .study import PreparedSearch, SearchResult, default_storage, prepare_search, run_search, study_encoding
from .table import write_trial_table

_logger = logging.getLogger("unitune.search")


def check_search_stage(run: RunConfig | RunContext, out: str | Path | None = None, *,
                       budget: str | int | None = None, trials: int | None = None, sampler: str | None = None,
                       storage: str | None = None, objectives: str | None = None,
                       seed_subnets: Sequence[str] = ()) -> tuple[str | int, dict[str, Any], int]:
    """Check the search settings of ``run`` (arguments override its ``search`` section) against
    the backbone's shapes, built on the meta device: a typo costs seconds, before a supernet and
    its validation images are loaded, or (``unitune run``) before the supernet is trained.
    Returns the budget as given, the settings for :func:`run_search` and the frozen backbone's
    parameter count (what a percentage budget refers to). Checked once per context and
    arguments: the :class:`~.study.PreparedSearch` is kept on the context for :func:`search_stage`."""
    ctx = RunContext.of(run, out)
    key = _search_key(budget, trials, sampler, storage, objectives, seed_subnets)
    budget, settings, _ = ctx.once(key, lambda: _check_search_stage(ctx, budget, trials, sampler, storage,
                                                                     objectives, seed_subnets))
    return budget, dict(settings), ctx.frozen


def _check_search_stage(ctx: RunContext, budget, trials, sampler, storage, objectives,
                        seed_subnets) -> tuple[str | int, dict[str, Any], PreparedSearch]:
    run, cfg = ctx.run, ctx.run.search
    check_rerank(cfg.rerank, f"{run.source}: search.rerank")
    budget = budget if budget is not None else cfg.budget
    if budget is None:
        raise UniTuneError(f"{run.source}: no budget: give --budget (e.g. 0.4M) or search.budget")
    settings = dict(
        n_trials=trials if trials is not None else cfg.trials,
        storage=storage or cfg.storage or default_storage(ctx.out),
        sampler=sampler or cfg.sampler,
        seed=cfg.seed,
        objectives=objectives or cfg.objectives,
        seed_subnets=seed_subnets,
    )
    space, dims = ctx.space, ctx.dims
    # Every method the space can turn on must fit this backbone (SSF and BitFit fold only into a
    # bias; an RmsNorm ViT has none): decided here, before a pretrain or supernet stage writes.
    check_vit(ctx.shapes, sizes=Subnet.largest(space, dims.depth))
    count = budget if isinstance(budget, int) and not isinstance(budget, bool) else ctx.budget(budget)
    with warnings.catch_warnings():  # a budget above the largest subnet: run_search warns once
        warnings.simplefilter("ignore", UserWarning)
        prepared = prepare_search(space, dims, count, backbone=run.model.backbone, backbone_params=ctx.frozen,
                                  **settings)
    return budget, settings, prepared


def prepared_search(ctx: RunContext, **overrides: Any) -> PreparedSearch:
    """What :func:`check_search_stage` checked for these ``overrides`` (checking it now if not yet)."""
    check_search_stage(ctx, **overrides)
    return ctx.cached(_search_key(**overrides))[2]


def _search_key(budget=None, trials=None, sampler=None, storage=None, objectives=None, seed_subnets=()) -> tuple:
    return ("search", budget, trials, sampler, storage, objectives, tuple(map(str, seed_subnets)))


def finished_search(run: RunConfig | RunContext, out: str | Path | None = None) -> SearchResult | None:
    """The search of ``run`` in ``out`` as an earlier run finished it, or None when it must run.

    Finished means: the study exists with the settings a search checks on joining it (budget,
    objectives, backbone, depth, space) and holds ``search.trials`` finished trials; ``best_subnet.yaml`` holds the study's pick; and the re-rank
    the config asks for (its ``top_k`` and ``epochs``, or none) is the one recorded, under the same
    :func:`~.rerank.score_key` (retrain recipe, seed, data, backbone weights). Then a second
    ``unitune run`` skips the stage: it keeps the search's recorded time and does not re-rank again
    (re-ranking again would train nothing, but would print, plot and warn as if it had)."""
    from unitune.io import read_yaml

    from .dedup import FINISHED
    from .export import run_folder_storage
    from .study import open_existing_study, parse_objectives

    ctx = RunContext.of(run, out)
    run, out, layout, cfg = ctx.run, ctx.out, ctx.layout, ctx.run.search
    if not layout.best_subnet.is_file():
        return None
    budget, settings, frozen = check_search_stage(ctx)
    storage = settings["storage"]
    text = str(storage)
    if "://" not in text and not text.startswith("journal:") and not Path(text).exists():
        return None  # never searched here: nothing to open (opening would create the file)
    name = cfg.study or run.name
    try:
        study = open_existing_study(run_folder_storage(storage), name)
    except UniTuneError:
        return None
    attrs = study.user_attrs
    if (attrs.get("budget") != prepared_search(ctx).budget
            or attrs.get("objectives") != list(parse_objectives(settings["objectives"]))
            or attrs.get("backbone") != run.model.backbone or attrs.get("depth") != ctx.depth
            or attrs.get("space") != ctx.space.to_dict()):
        return None  # the search runs and says what differs (search/study.py: CHECKED_ATTRS)
    if len(study.get_trials(deepcopy=False, states=FINISHED)) < settings["n_trials"]:
        return None
    top_k, epochs = check_rerank(cfg.rerank, f"{run.source}: search.rerank")
    if cfg.fitness == "standalone":
        top_k = 0
    record = attrs.get("rerank") or {}
    if (record.get("top_k"), record.get("epochs")) != ((top_k, epochs) if top_k else (None, None)):
        return None
    if top_k and record.get("score_key") != score_key(ctx, out, epochs):
        return None  # another retrain recipe, seed, data or backbone: the re-rank scores anew
    best = best_trial(study, required=False)
    meta = (read_yaml(layout.best_subnet) or {}).get("meta") or {}
    if best is None or meta.get("trial") != best.number or meta.get("study") != study.study_name:
        return None
    if not layout.trials_csv.is_file():  # a run folder of an older unitune: the table is cheap to add
        write_trial_table(study, layout.trials_csv)
    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    return SearchResult(study=study, storage=text, n_complete=complete, best_trial=best,
                        best_subnet=trial_subnet(best, study_encoding(study)))


def search_stage(run: RunConfig | RunContext, out: str | Path | None = None, *, budget: str | int | None = None,
                 trials: int | None = None, sampler: str | None = None, storage: str | None = None,
                 study: str | None = None, objectives: str | None = None, seed_subnets: Sequence[str] = (),
                 supernet_file: str | None = None, progress: bool = True) -> tuple[SearchResult, dict[str, Path]]:
    """Search ``run``'s trained supernet; arguments override the config's ``search`` section."""
    ctx = RunContext.of(run, out)
    run, out, layout, cfg = ctx.run, ctx.out, ctx.layout, ctx.run.search
    overrides = dict(budget=budget, trials=trials, sampler=sampler, storage=storage, objectives=objectives,
                     seed_subnets=seed_subnets)
    budget, settings, frozen = check_search_stage(ctx, out, **overrides)
    checked = ctx.cached(_search_key(**overrides))
    prepared = checked[2] if checked else None  # what that check prepared (None: run_search prepares it)
    pruner = check_fitness_pruner(cfg.fitness, cfg.pruner, settings["objectives"], f"{run.source}: search")
    if cfg.fitness == "standalone":  # no supernet: each trial trains its subnet (search/pruning.py)
        # Counts with the head read the shapes-only build's 2-class head here, as before the context.
        space, dims = ctx.space, ctx.dims
        fitness: Any = StandaloneFitness(ctx, out, cfg.standalone_epochs)
        attrs: dict[str, Any] = {"backbone": run.model.backbone, "config": run.source,
                                 "fitness": f"standalone, {cfg.standalone_epochs} epochs"}
    else:
        fitness = SupernetFitness(ctx, out, supernet_file)
        # The trained supernet's space and dims (its head sized by its data); the frozen count is the context's.
        space, dims = fitness.model.space, BackboneDims.from_model(fitness.model)
        attrs = {"backbone": run.model.backbone, "supernet": fitness.meta["path"],
                 "config": run.source, "val_images": fitness.num_images}
    attrs["pruner"] = pruner
    result = run_search(
        fitness, space, dims, budget,
        study_name=study or cfg.study or run.name,
        study_attrs=attrs,
        progress=progress,
        backbone_params=frozen,
        pruner=pruner,
        prepared=prepared,
        **settings,
    )
    top_k, epochs = check_rerank(cfg.rerank, f"{run.source}: search.rerank")
    if top_k and cfg.fitness == "standalone":
        # The search already ranked by stand-alone val accuracy; there is no inherited figure to check.
        _logger.info("search.rerank skipped: search.fitness is standalone")
        top_k = 0
    if not top_k and forget_rerank(result.study):
        best = best_trial(result.study)
        result = dataclasses.replace(result, best_trial=best,
                                     best_subnet=trial_subnet(best, study_encoding(result.study)))
    written = write_outputs(result.study, out, dims=dims)
    if top_k:
        # Frees the supernet first: re-ranking trains fresh subnets from the pretrained backbone.
        del fitness
        rerank(ctx, out, result.study, top_k, epochs, progress=progress)
        written["rerank_plot"] = layout.rerank_plot
        # The result names the re-rank's winner, as best_subnet.yaml does: `unitune search` and the
        # run summary report it (one rule for "best", search/export.py).
        best = best_trial(result.study)
        result = dataclasses.replace(result, best_trial=best,
                                     best_subnet=trial_subnet(best, study_encoding(result.study)))
        # Drawn again: the Pareto plot's "chosen" star and the heatmap's first row are the winner
        # now, and the trial table marks it and holds the stand-alone figures.
        written.update(save_plots(result.study, layout.plots))
        written.update(write_trial_table(result.study, layout.trials_csv))
    return result, written
