"""The Optuna side: budget-constrained search over subnets of a trained supernet.

The budget is hard: every sampled subnet is repaired to fit before it is evaluated and stored
(:class:`RepairSampler`), so every trial in the storage is feasible and its stored parameters
are exactly the subnet that was evaluated. The budget, the subnet encoding and the repair it
builds on are the PEFT library's (``unitune.supernet.budget``, ``.encoding``, ``.repair``).
"""

from .dashboard import dashboard_app, dashboard_storage, serve_dashboard
from .evolution import EvolutionSampler
from .export import (
    best_ties,
    best_trial,
    export_best,
    export_subnets,
    load_subnets,
    pareto_trials,
    ranked_trials,
    select_subnet,
    trial_subnet,
    write_outputs,
)
from .plots import save_plots
from .sampler import SAMPLERS, RepairSampler, make_base_sampler, make_sampler
from .storage import open_storage, recover_dead_trials, resolve_storage, storage_lock
from .study import SearchResult, default_storage, open_existing_study, prepare_seeds, run_search, study_encoding

__all__ = [
    "SAMPLERS",
    "EvolutionSampler",
    "RepairSampler",
    "SearchResult",
    "best_ties",
    "best_trial",
    "dashboard_app",
    "dashboard_storage",
    "default_storage",
    "export_best",
    "export_subnets",
    "load_subnets",
    "make_base_sampler",
    "make_sampler",
    "open_existing_study",
    "open_storage",
    "pareto_trials",
    "prepare_seeds",
    "ranked_trials",
    "recover_dead_trials",
    "resolve_storage",
    "run_search",
    "save_plots",
    "select_subnet",
    "serve_dashboard",
    "storage_lock",
    "study_encoding",
    "trial_subnet",
    "write_outputs",
]
