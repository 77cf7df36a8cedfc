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

from unitune.engine.backbone import create_backbone
from unitune.engine.config import RunConfig, check_fitness_pruner
from unitune.errors import UniTuneError
from unitune.supernet import BackboneDims, SearchSpace, Subnet, check_vit

from .export import best_trial, trial_subnet, write_outputs
from .fitness import StandaloneFitness, SupernetFitness
from .plots import save_plots
from .rerank import check_rerank, forget_rerank, rerank, score_key
from .study import SearchResult, check_search_settings, default_storage, run_search, study_encoding
from .table import CSV_FILE as TABLE_CSV
from .table import write_trial_table

_logger = logging.getLogger("unitune.search")


def check_search_stage(run: RunConfig, out: str | Path, *, budget: str | int | None = None, trials: int | None = None,
                       sampler: str | None = None, storage: str | None = None, objectives: str | None = None,
                       seed_subnets: Sequence[str] = ()) -> tuple[str | int, dict[str, Any], int]:
    """Check the search settings of ``run`` (arguments override its ``search`` section) against
    the backbone's shapes, built on the meta device: a typo costs seconds, before a supernet and
    its validation images are loaded, or (``unitune run``) before the supernet is trained.
    Returns the budget as given, the settings for :func:`run_search` and the frozen backbone's
    parameter count (what a percentage budget refers to)."""
    cfg = run.search
    check_rerank(cfg.rerank, f"{run.source}: search.rerank")
    budget = budget if budget is not None else cfg.budget
    if budget is None:
        raise UniTuneError(f"{run.source}: no budget: give --budget (e.g. 0.4M) or search.budget")
    settings = dict(
        n_trials=trials if trials is not None else cfg.trials,
        storage=storage or cfg.storage or default_storage(out),
        sampler=sampler or cfg.sampler,
        seed=cfg.seed,
        objectives=objectives or cfg.objectives,
        seed_subnets=seed_subnets,
    )
    vit = create_backbone(run.model.backbone, 2, kwargs=run.model.kwargs, meta=True)
    head = {id(p) for p in vit.get_classifier().parameters()}
    frozen = sum(p.numel() for p in vit.parameters() if id(p) not in head)
    space, dims = SearchSpace.from_dict(run.space, source=f"{run.source}: space"), BackboneDims.from_model(vit)
    # Every method the space can turn on must fit this backbone (SSF and BitFit fold only into a
    # bias; an RmsNorm ViT has none): decided here, before a pretrain or supernet stage writes.
    check_vit(vit, sizes=Subnet.largest(space, dims.depth))
    with warnings.catch_warnings():  # a budget above the largest subnet: run_search warns once
        warnings.simplefilter("ignore", UserWarning)
        check_search_settings(space, dims, budget, backbone=run.model.backbone,
                              backbone_params=frozen, **settings)
    return budget, settings, frozen


def finished_search(run: RunConfig, out: str | Path) -> SearchResult | None:
    """The search of ``run`` in ``out`` as an earlier run finished it, or None when it must run.

    Finished means: the study exists with the settings a search checks on joining it (budget,
    objectives, backbone, depth, space) and holds ``search.trials`` finished trials; ``best_subnet.yaml`` holds the study's pick; and the re-rank
    the config asks for (its ``top_k`` and ``epochs``, or none) is the one recorded, under the same
    :func:`~.rerank.score_key` (retrain recipe, seed, data, backbone weights). Then a second
    ``unitune run`` skips the stage: it keeps the search's recorded time and does not re-rank again
    (re-ranking again would train nothing, but would print, plot and warn as if it had)."""
    from unitune.io import read_yaml

    from unitune.supernet.budget import parse_budget
    from .dedup import FINISHED
    from .export import run_folder_storage
    from .study import open_existing_study, parse_objectives

    out = Path(out)
    cfg = run.search
    if not (out / "best_subnet.yaml").is_file():
        return None
    budget, settings, frozen = check_search_stage(run, out)
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
    depth = BackboneDims.from_model(create_backbone(run.model.backbone, 2, kwargs=run.model.kwargs, meta=True)).depth
    if (attrs.get("budget") != parse_budget(budget, frozen)
            or attrs.get("objectives") != list(parse_objectives(settings["objectives"]))
            or attrs.get("backbone") != run.model.backbone or attrs.get("depth") != depth
            or attrs.get("space") != SearchSpace.from_dict(run.space, source=f"{run.source}: space").to_dict()):
        return None  # the search runs and says what differs (search/study.py: CHECKED_ATTRS)
    if len(study.get_trials(deepcopy=False, states=FINISHED)) < settings["n_trials"]:
        return None
    top_k, epochs = check_rerank(cfg.rerank, f"{run.source}: search.rerank")
    if cfg.fitness == "standalone":
        top_k = 0
    record = attrs.get("rerank") or {}
    if (record.get("top_k"), record.get("epochs")) != ((top_k, epochs) if top_k else (None, None)):
        return None
    if top_k and record.get("score_key") != score_key(run, out, epochs):
        return None  # another retrain recipe, seed, data or backbone: the re-rank scores anew
    best = best_trial(study, required=False)
    meta = (read_yaml(out / "best_subnet.yaml") or {}).get("meta") or {}
    if best is None or meta.get("trial") != best.number or meta.get("study") != study.study_name:
        return None
    if not (out / TABLE_CSV).is_file():  # a run folder of an older unitune: the table is cheap to add
        write_trial_table(study, out / TABLE_CSV)
    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    return SearchResult(study=study, storage=text, n_complete=complete, best_trial=best,
                        best_subnet=trial_subnet(best, study_encoding(study)))


def search_stage(run: RunConfig, out: str | Path, *, budget: str | int | None = None, trials: int | None = None,
                 sampler: str | None = None, storage: str | None = None, study: str | None = None,
                 objectives: str | None = None, seed_subnets: Sequence[str] = (), supernet_file: str | None = None,
                 progress: bool = True) -> tuple[SearchResult, dict[str, Path]]:
    """Search ``run``'s trained supernet; arguments override the config's ``search`` section."""
    out = Path(out)
    cfg = run.search
    budget, settings, frozen = check_search_stage(run, out, budget=budget, trials=trials, sampler=sampler,
                                                  storage=storage, objectives=objectives, seed_subnets=seed_subnets)
    pruner = check_fitness_pruner(cfg.fitness, cfg.pruner, settings["objectives"], f"{run.source}: search")
    if cfg.fitness == "standalone":  # no supernet: each trial trains its subnet (search/pruning.py)
        fitness: Any = StandaloneFitness(run, out, cfg.standalone_epochs)
        space, dims = SearchSpace.from_dict(run.space), BackboneDims.from_model(
            create_backbone(run.model.backbone, 2, kwargs=run.model.kwargs, meta=True))
        attrs: dict[str, Any] = {"backbone": run.model.backbone, "config": run.source,
                                 "fitness": f"standalone, {cfg.standalone_epochs} epochs"}
    else:
        fitness = SupernetFitness(run, out, supernet_file)
        space, dims = fitness.model.space, BackboneDims.from_model(fitness.model)
        attrs = {"backbone": run.model.backbone, "supernet": fitness.meta["path"],
                 "config": run.source, "val_images": fitness.num_images}
        backbone_params = sum(p.numel() for p in fitness.model.vit.parameters() if not p.requires_grad)
        assert backbone_params == frozen, (backbone_params, frozen)
    attrs["pruner"] = pruner
    result = run_search(
        fitness, space, dims, budget,
        study_name=study or cfg.study or run.name,
        study_attrs=attrs,
        progress=progress,
        backbone_params=frozen,
        pruner=pruner,
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
        rerank(run, out, result.study, top_k, epochs, progress=progress)
        written["rerank_plot"] = out / "plots" / "rerank_tau.png"
        # The result names the re-rank's winner, as best_subnet.yaml does: `unitune search` and the
        # run summary report it (one rule for "best", search/export.py).
        best = best_trial(result.study)
        result = dataclasses.replace(result, best_trial=best,
                                     best_subnet=trial_subnet(best, study_encoding(result.study)))
        # Drawn again: the Pareto plot's "chosen" star and the heatmap's first row are the winner
        # now, and the trial table marks it and holds the stand-alone figures.
        written.update(save_plots(result.study, out / "plots"))
        written.update(write_trial_table(result.study, out / TABLE_CSV))
    return result, written
