"""unitune uses Optuna's public API, except for the one read of a study's storage that Optuna offers
no public way to make (``search.storage.trial_storage``, whose docstring says why)."""

from __future__ import annotations

import ast
import warnings

import optuna
import pytest
from optuna.trial import TrialState
from test_import_graph import ROOT, package_modules

from unitune.search.storage import open_storage, stored_trial, trial_storage

# Optuna's private names that code outside Optuna has reached for
PRIVATE = {"_storage", "_trial_id", "_study_id", "_cached_frozen_trial", "_thread_local", "_get_trials",
           "_is_multi_objective", "_pop_waiting_trial_id", "_log_completed_trial", "_filter_study"}


def private_uses() -> list[str]:
    """``module:function: expr`` for every use of those names, and every import from a private
    Optuna module (``optuna.x._y``), in the unitune package."""
    found = []

    class Finder(ast.NodeVisitor):
        def __init__(self, module: str):
            self.where = [module]

        def visit_FunctionDef(self, node):  # uses are named by their innermost function
            self.where.append(node.name)
            self.generic_visit(node)
            self.where.pop()

        visit_AsyncFunctionDef = visit_FunctionDef

        def visit_Attribute(self, node):
            if node.attr in PRIVATE:
                found.append(f"{self.where[0]}:{self.where[-1]}: {ast.unparse(node)}")
            self.generic_visit(node)

        def visit_ImportFrom(self, node):
            if (node.module or "").startswith("optuna") and any(p.startswith("_") for p in node.module.split(".")):
                found.append(f"{self.where[0]}:{self.where[-1]}: from {node.module} import ...")

    for name, path in package_modules(ROOT).items():
        Finder(name).visit(ast.parse(path.read_text()))
    return sorted(set(found))


def test_the_only_private_optuna_access_is_the_storage_read_in_trial_storage():
    assert private_uses() == ["unitune.search.storage:trial_storage: study._storage"]


@pytest.mark.parametrize("spec", ["memory", "sqlite"])
def test_trial_storage_names_the_trial_of_that_study_when_ids_differ_from_numbers(tmp_path, spec):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = open_storage(None if spec == "memory" else tmp_path / "s.db")
    first = optuna.create_study(storage=storage, study_name="first")
    second = optuna.create_study(storage=storage, study_name="second")
    for study in (first, second, first):  # ids interleave: second's trial 0 has id 2 in SQLite
        study.ask()
    backend, trial_id = trial_storage(second, 0)
    backend.set_trial_system_attr(trial_id, "mark", "second/0")
    assert stored_trial(second, 0).system_attrs["mark"] == "second/0"
    assert all("mark" not in t.system_attrs for t in first.get_trials(deepcopy=False))
    backend, trial_id = trial_storage(first, 1)
    backend.set_trial_user_attr(trial_id, "mark", "first/1")
    assert [t.user_attrs.get("mark") for t in first.get_trials(deepcopy=False)] == [None, "first/1"]
    assert stored_trial(first, 1).state == TrialState.RUNNING
