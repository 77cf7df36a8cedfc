"""The search stage of a run: the trained supernet as fitness, an Optuna study, and its outputs
(``best_subnet.yaml``, ``plots/``) in the run folder. Running it again joins the same study."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from unitune.config import RunConfig
from unitune.errors import UniTuneError
from unitune.supernet import BackboneDims

from .export import write_outputs
from .fitness import SupernetFitness
from .study import SearchResult, default_storage, run_search


def search_stage(run: RunConfig, out: str | Path, *, budget: str | int | None = None, trials: int | None = None,
                 sampler: str | None = None, storage: str | None = None, study: str | None = None,
                 objectives: str | None = None, seed_subnets: Sequence[str] = (), supernet_file: str | None = None,
                 progress: bool = True) -> tuple[SearchResult, dict[str, Path]]:
    """Search ``run``'s trained supernet; arguments override the config's ``search`` section."""
    out = Path(out)
    cfg = run.search
    budget = budget if budget is not None else cfg.budget
    if budget is None:
        raise UniTuneError(f"{run.source}: no budget: give --budget (e.g. 0.4M) or search.budget")
    fitness = SupernetFitness(run, out, supernet_file)
    model = fitness.model
    attrs: dict[str, Any] = {"backbone": run.model.backbone, "supernet": fitness.meta["path"],
                             "config": run.source, "val_images": fitness.num_images}
    result = run_search(
        fitness, model.space, BackboneDims.from_model(model), budget,
        n_trials=trials if trials is not None else cfg.trials,
        storage=storage or cfg.storage or default_storage(out),
        study_name=study or cfg.study or run.name,
        sampler=sampler or cfg.sampler,
        seed=cfg.seed,
        objectives=objectives or cfg.objectives,
        seed_subnets=seed_subnets,
        study_attrs=attrs,
        progress=progress,
        backbone_params=sum(p.numel() for p in model.vit.parameters() if not p.requires_grad),
    )
    return result, write_outputs(result.study, out)
