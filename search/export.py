"""Turn a study into subnet files that retrain reads directly.

- ``best_subnet.yaml``: the best trial (see *One rule for "best"* below) in the plain
  :class:`Subnet` file format, with ``meta`` holding the study, trial number, val accuracy,
  parameter counts and budget. ``Subnet.load`` reads it.
- :func:`export_subnets` with ``top_k`` or ``pareto``: one YAML file ::

      study: cifar100
      budget: 400000
      selection: top-5            # or pareto
      subnets:                    # each entry is itself a complete subnet file
        - backbone: vit_base_patch16_224
          subnet: {lora: [...], adapter: [...], vpt: [...], ssf: [...], ssf_global: 0}
          meta: {rank: 1, trial: 17, val_accuracy: 0.91, n_params: 398000, ...}

  :func:`load_subnets` reads either form and returns ``[(Subnet, meta), ...]``, best first.

Every trial in the storage is within budget (the sampler repairs before storing), so "best"
needs no feasibility filter beyond the COMPLETE state.

One rule for "best", so that optuna-dashboard, ``best_subnet.yaml``, ``export-subnet`` and the
run summary name the same trial:

- one objective (``acc``): Optuna's own ``study.best_trial``, which is what optuna-dashboard
  marks. Among trials that tie on val accuracy Optuna takes the one its storage returns first
  (in practice the earliest; Optuna documents no tie rule). unitune once preferred the tied
  trial with fewer parameters, and the dashboard then showed another "best" than the file; a
  hidden rule that differs from the one on screen costs more than a few parameters, and a
  search that should trade accuracy for size has ``acc,params`` for that.
  :func:`best_ties` lists the ties, and the run summary says how many there were.
- after ``search.rerank`` (one objective or two): the re-rank's winner, the candidate with the best
  stand-alone val accuracy (stored on the study as the ``rerank`` attribute). The dashboard still
  marks Optuna's best by inherited accuracy; the study's note and its ``best_trial`` attribute
  name the re-ranked one, as ``best_subnet.yaml``, ``export-subnet`` and the summary do.
- two objectives (``acc,params``): Optuna has no single best; the dashboard shows the Pareto
  front. The best is the front's most accurate point, i.e. the highest accuracy, then the fewest
  parameters, then the earliest trial, which is always on the front.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from unitune.errors import UniTuneError
from unitune.io import read_yaml, write_yaml_atomic
from unitune.supernet import BackboneDims, Subnet

from .encoding import SubnetEncoding

RERANK_ATTR = "rerank"  # the study attribute search.rerank writes (its figures and its winner)


def _accuracy(trial: FrozenTrial) -> float:
    return float(trial.values[0])


def _n_params(trial: FrozenTrial) -> int:
    return int(trial.user_attrs.get("n_params", 0))


def _key(t: FrozenTrial) -> tuple:
    return -_accuracy(t), _n_params(t), t.number


def ranked_trials(study: optuna.Study, reranked: bool = True) -> list[FrozenTrial]:
    """COMPLETE trials, best first: :func:`best_trial`, then the others by accuracy down, then
    parameters up, then trial number up. ``reranked=False``: by inherited accuracy alone (what
    the re-rank itself draws its candidates from)."""
    trials = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=_key)
    if trials:
        # with one objective or two: the re-rank's winner is what it wrote to best_subnet.yaml
        best = _reranked_winner(study, trials) if reranked else None
        if best is None and len(study.directions) == 1:
            best = study.best_trial.number  # Optuna's (and the dashboard's) choice leads
        if best is not None:
            trials.sort(key=lambda t: t.number != best)  # stable: the rest keep their order
    return trials


def _reranked_winner(study: optuna.Study, complete: list[FrozenTrial]) -> int | None:
    """The trial ``search.rerank`` picked by stand-alone val accuracy, if it ran (see rerank.py)."""
    winner = (study.user_attrs.get(RERANK_ATTR) or {}).get("winner")
    return winner if any(t.number == winner for t in complete) else None


def best_trial(study: optuna.Study, required: bool = True) -> FrozenTrial | None:
    """The best COMPLETE trial by the module's one rule (the re-rank's winner, else Optuna's
    ``best_trial`` for one objective)."""
    ranked = ranked_trials(study)
    if not ranked:
        if required:
            raise UniTuneError(f"study {study.study_name!r}: has no complete trial yet")
        return None
    return ranked[0]


def best_ties(study: optuna.Study) -> list[FrozenTrial]:
    """The COMPLETE trials with the best trial's val accuracy (itself included), fewest parameters first."""
    best = best_trial(study, required=False)
    if best is None:
        return []
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted((t for t in trials if _accuracy(t) == _accuracy(best)), key=_key)


def pareto_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The accuracy / parameter Pareto front of the COMPLETE trials, fewest parameters first.

    Computed from the ``n_params`` attribute, so it exists for single-objective studies too.
    Of trials with equal (accuracy, parameters) only the earliest is kept.
    """
    front: list[FrozenTrial] = []
    best_acc = float("-inf")
    for t in sorted(ranked_trials(study), key=lambda t: (_n_params(t), -_accuracy(t), t.number)):
        if _accuracy(t) > best_acc:
            front.append(t)
            best_acc = _accuracy(t)
    return front


def trial_subnet(trial: FrozenTrial, encoding: SubnetEncoding, backbone: str | None = None) -> Subnet:
    subnet = encoding.decode(trial.params, source=f"trial {trial.number}")
    if backbone:
        subnet = subnet.replace(backbone=backbone)
    return subnet


def trial_meta(study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
    attrs = trial.user_attrs
    meta: dict[str, Any] = {
        "study": study.study_name,
        "trial": trial.number,
        "val_accuracy": _accuracy(trial),
        "n_params": attrs.get("n_params"),
        "n_params_with_head": attrs.get("n_params_with_head"),
        "budget": study.user_attrs.get("budget"),
    }
    for key in ("supernet", "backbone"):
        if key in study.user_attrs:
            meta[key] = study.user_attrs[key]
    return meta


def _encoding(study: optuna.Study) -> SubnetEncoding:
    from .study import study_encoding

    return study_encoding(study)


def export_best(study: optuna.Study, path: str | os.PathLike) -> Path:
    """Write the best trial as a plain subnet file (what ``unitune retrain --subnet`` reads)."""
    trial = best_trial(study)
    assert trial is not None
    subnet = trial_subnet(trial, _encoding(study), study.user_attrs.get("backbone"))
    return subnet.save(path, meta=trial_meta(study, trial))


def export_subnets(
    storage: str | os.PathLike | BaseStorage | optuna.Study,
    study_name: str | None = None,
    out: str | os.PathLike = "best_subnet.yaml",
    top_k: int | None = None,
    pareto: bool = False,
) -> Path:
    """Export the best subnet (default), the ``top_k`` best, or the Pareto set to ``out``.

    ``storage`` may be a storage spec (see :func:`open_storage`) or a loaded study.
    """
    if top_k is not None and pareto:
        raise UniTuneError("export: give either a top-k count or pareto, not both")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise UniTuneError(f"export: top-k must be a positive integer, got {top_k!r}")
    if isinstance(storage, optuna.Study):
        study = storage
    else:
        from .study import open_existing_study

        study = open_existing_study(run_folder_storage(storage), study_name)
    if top_k is None and not pareto:
        return export_best(study, out)
    trials = pareto_trials(study) if pareto else ranked_trials(study)[:top_k]
    if not trials:
        raise UniTuneError(f"study {study.study_name!r}: has no complete trial yet")
    encoding = _encoding(study)
    backbone = study.user_attrs.get("backbone")
    entries = []
    for rank, trial in enumerate(trials, 1):
        meta = {"rank": rank, **trial_meta(study, trial)}
        entries.append(trial_subnet(trial, encoding, backbone).to_dict(meta))
    doc = {
        "study": study.study_name,
        "budget": study.user_attrs.get("budget"),
        "selection": "pareto" if pareto else f"top-{top_k}",
        "subnets": entries,
    }
    write_yaml_atomic(out, doc)
    return Path(out)


def run_folder_storage(spec: Any) -> Any:
    """A run folder means its ``study.db`` (or ``study.log``), as for ``unitune dashboard``."""
    if isinstance(spec, (str, os.PathLike)) and Path(spec).is_dir():
        from .dashboard import RUN_FOLDER_STORAGES

        for name in RUN_FOLDER_STORAGES:
            if (Path(spec) / name).is_file():
                return Path(spec) / name
        raise UniTuneError(f"{spec}: folder holds no study storage (expected one of {list(RUN_FOLDER_STORAGES)})")
    return spec


def load_subnets(path: str | os.PathLike) -> list[tuple[Subnet, dict[str, Any]]]:
    """Read a subnet file or a top-k / Pareto list file: ``[(subnet, meta), ...]`` in file order."""
    data = read_yaml(path)
    if isinstance(data, Mapping) and "subnets" in data:
        entries = data["subnets"]
        if not isinstance(entries, list) or not entries:
            raise UniTuneError(f"{path}: 'subnets' must be a non-empty list of subnet entries")
        return [
            (Subnet.from_dict(entry, source=f"{path}: subnets[{i}]"), dict(entry.get("meta") or {}))
            for i, entry in enumerate(entries)
        ]
    subnet = Subnet.from_dict(data, source=str(path))
    return [(subnet, dict(data.get("meta") or {}))]


def write_outputs(study: optuna.Study, out_dir: str | os.PathLike, top_heatmap: int = 10,
                  dims: BackboneDims | None = None) -> dict[str, Path]:
    """``DIR/best_subnet.yaml`` and the plots in ``DIR/plots/``; what was written, by name. The
    chosen trial is also marked on the study for optuna-dashboard (a note and ``best_trial``);
    ``dims`` (the backbone's shapes) adds per-block parameter counts to that note."""
    from .plots import save_plots

    from unitune.supernet import count_params

    from .notes import mark_best

    out_dir = Path(out_dir)
    written = {"best_subnet": export_best(study, out_dir / "best_subnet.yaml")}
    best = best_trial(study)
    subnet = trial_subnet(best, _encoding(study))
    mark_best(study, best, subnet, count_params(subnet, dims, _encoding(study).space) if dims else None)
    written.update(save_plots(study, out_dir / "plots", top=top_heatmap))
    return written


def select_subnet(spec: str | os.PathLike, index: int | None = None) -> tuple[Subnet, dict[str, Any], str]:
    """One subnet from a subnet file or from a top-k / Pareto list of ``export-subnet``.

    ``spec`` is ``FILE``, ``FILE#N`` (the N-th entry, counted from 1: rank N of a top-k list) or
    ``FILE#trial-T`` (the entry of study trial T); ``index`` (``--subnet-index``) is the same N.
    A list file needs one of them unless it holds a single entry. Returns the subnet, its meta
    and a label for messages (``top.yaml#2``)."""
    text = str(spec)
    path, pick = text, ""
    if "#" in text and not Path(text).exists():  # a file whose name holds '#' is read as is
        path, pick = text.rsplit("#", 1)
    if pick and index is not None:
        raise UniTuneError(f"{text}: give the entry either after '#' or with --subnet-index, not both")
    entries = load_subnets(path)
    data = read_yaml(path)
    is_list = isinstance(data, Mapping) and "subnets" in data
    if index is not None:
        pick = str(index)
    if not pick:
        if is_list and len(entries) > 1:
            raise UniTuneError(f"{path}: holds {len(entries)} subnets ({data.get('selection', 'a list')}); pick one "
                               f"as {path}#N (N = 1..{len(entries)}), {path}#trial-T or with --subnet-index N")
        subnet, meta = entries[0]
        return subnet, meta, str(path)
    if pick.startswith("trial-") and pick[6:].isdigit():
        trial = int(pick[6:])
        chosen = [(s, m) for s, m in entries if m.get("trial") == trial]
        if not chosen:
            trials = [m.get("trial") for _, m in entries]
            raise UniTuneError(f"{path}: no entry of trial {trial} (trials: {trials})")
        subnet, meta = chosen[0]
        return subnet, meta, f"{path}#{pick}"
    if not pick.isdigit() or not 1 <= int(pick) <= len(entries):
        raise UniTuneError(f"{path}: entry {pick!r} does not exist; expected a number 1..{len(entries)} "
                           f"or trial-T")
    subnet, meta = entries[int(pick) - 1]
    return subnet, meta, f"{path}#{int(pick)}"
