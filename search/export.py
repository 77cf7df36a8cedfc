"""Turn a study into subnet files that retrain reads directly.

- ``best_subnet.yaml``: the best trial (:mod:`.ranking`) in the plain
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

Which trial is "best" is :mod:`.ranking`'s one rule, so that optuna-dashboard, ``best_subnet.yaml``,
``export-subnet`` and the run summary name the same trial.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial

from unitune.engine.context import BEST_SUBNET, RunLayout
from unitune.errors import UniTuneError
from unitune.io import read_yaml, write_yaml_atomic
from unitune.supernet import BackboneDims, Subnet, count_params

from .dashboard import RUN_FOLDER_STORAGES
from unitune.supernet.encoding import SubnetEncoding
from .notes import mark_best
from .plots import save_plots
# re-exported: callers of export_subnets and best_subnet.yaml have always found the ranking here
from .ranking import RERANK_ATTR, best_ties, best_trial, pareto_trials, ranked_trials  # noqa: F401
from .study import open_existing_study, study_encoding
from .table import CSV_FILE as TABLE_CSV
from .table import write_trial_table

def trial_subnet(trial: FrozenTrial, encoding: SubnetEncoding, backbone: str | None = None) -> Subnet:
    subnet = encoding.decode_trial(trial)  # sizes, or the indices an older study stored
    if backbone:
        subnet = subnet.replace(backbone=backbone)
    return subnet


def trial_meta(study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
    attrs = trial.user_attrs
    meta: dict[str, Any] = {
        "study": study.study_name,
        "trial": trial.number,
        "val_accuracy": float(trial.values[0]),
        "n_params": attrs.get("n_params"),
        "n_params_with_head": attrs.get("n_params_with_head"),
        "budget": study.user_attrs.get("budget"),
    }
    for key in ("supernet", "backbone"):
        if key in study.user_attrs:
            meta[key] = study.user_attrs[key]
    return meta


def _encoding(study: optuna.Study) -> SubnetEncoding:
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
    out: str | os.PathLike = BEST_SUBNET,
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
        for name in RUN_FOLDER_STORAGES:
            if (Path(spec) / name).is_file():
                return Path(spec) / name
        raise UniTuneError(f"{spec}: folder holds no study storage (expected one of {list(RUN_FOLDER_STORAGES)})")
    return spec


def load_subnets(path: str | os.PathLike, depth: Any = None) -> list[tuple[Subnet, dict[str, Any]]]:
    """Read a subnet file or a top-k / Pareto list file: ``[(subnet, meta), ...]`` in file order
    (``depth``: the block count for sizes given once for every block, see ``Subnet.from_dict``)."""
    data = read_yaml(path)
    if isinstance(data, Mapping) and "subnets" in data:
        entries = data["subnets"]
        if not isinstance(entries, list) or not entries:
            raise UniTuneError(f"{path}: 'subnets' must be a non-empty list of subnet entries")
        return [
            (Subnet.from_dict(entry, source=f"{path}: subnets[{i}]", depth=depth), dict(entry.get("meta") or {}))
            for i, entry in enumerate(entries)
        ]
    subnet = Subnet.from_dict(data, source=str(path), depth=depth)
    return [(subnet, dict(data.get("meta") or {}))]


def write_outputs(study: optuna.Study, out_dir: str | os.PathLike, top_heatmap: int = 10,
                  dims: BackboneDims | None = None) -> dict[str, Path]:
    """``DIR/best_subnet.yaml``, the trial table (``DIR/trials.csv``, ``DIR/trials.md``: :mod:`.table`)
    and the plots in ``DIR/plots/``; what was written, by name. The
    chosen trial is also marked on the study for optuna-dashboard (a note and ``best_trial``);
    ``dims`` (the backbone's shapes) adds per-block parameter counts to that note."""
    out_dir = Path(out_dir)
    written = {"best_subnet": export_best(study, RunLayout(out_dir).best_subnet)}
    best = best_trial(study)
    subnet = trial_subnet(best, _encoding(study))
    mark_best(study, best, subnet, count_params(subnet, dims, _encoding(study).space) if dims else None)
    written.update(save_plots(study, RunLayout(out_dir).plots, top=top_heatmap))
    written.update(write_trial_table(study, out_dir / TABLE_CSV))
    return written


def _ascii_digits(text: str) -> bool:
    """``0``-``9`` only: ``str.isdigit`` also takes '²' and other digits ``int`` refuses."""
    return text.isascii() and text.isdigit()


def select_subnet(spec: str | os.PathLike, index: int | None = None,
                  depth: Any = None) -> tuple[Subnet, dict[str, Any], str]:
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
    entries = load_subnets(path, depth)
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
    if pick.startswith("trial-") and _ascii_digits(pick[6:]):
        trial = int(pick[6:])
        chosen = [(s, m) for s, m in entries if m.get("trial") == trial]
        if not chosen:
            trials = [m.get("trial") for _, m in entries]
            raise UniTuneError(f"{path}: no entry of trial {trial} (trials: {trials})")
        subnet, meta = chosen[0]
        return subnet, meta, f"{path}#{pick}"
    if not _ascii_digits(pick) or not 1 <= int(pick) <= len(entries):
        raise UniTuneError(f"{path}: entry {pick!r} does not exist; expected a number 1..{len(entries)} "
                           f"or trial-T")
    subnet, meta = entries[int(pick) - 1]
    return subnet, meta, f"{path}#{int(pick)}"
