"""The trial table: every trial of a study, one row each, as CSV and markdown.

The stock optuna-dashboard has no table of all trials with their sizes (its trial list shows one
trial at a time), so ``unitune search`` writes ``DIR/trials.csv`` and ``DIR/trials.md`` and
``unitune export-subnet --table FILE.csv`` writes them for any storage. Columns:

- ``trial``, ``state`` (COMPLETE, PRUNED, FAIL, ...), ``pick`` (True for the trial
  ``best_subnet.yaml`` holds: :mod:`.ranking`'s one rule, the re-rank's winner after a re-rank);
- ``val_accuracy``: the search's fitness (inherited from the supernet, or stand-alone with
  ``search.fitness: standalone``), and ``standalone_val_accuracy`` for the re-ranked candidates;
- ``n_params`` (head excluded), ``n_params_with_head``, ``params_<method>`` per method;
- ``sizes_<method>``: the per-block sizes (``'10 5 0 1'``), decoded from the stored parameters;
- ``source`` (``sampler``, ``seed`` or the single method's label) and ``fail_reason``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import optuna

from unitune.engine.context import TRIALS_CSV, TRIALS_MD
from unitune.io import atomic_path, write_text_atomic
from unitune.supernet.methods import METHODS

from .ranking import RERANK_ATTR, best_trial
from .study import study_encoding

CSV_FILE, MD_FILE = TRIALS_CSV, TRIALS_MD  # the run folder's names (unitune/engine/context.py)


def trial_table(study: optuna.Study):
    """A pandas DataFrame with one row per trial of ``study`` (see the module docstring)."""
    import pandas as pd

    encoding = study_encoding(study)
    pick = best_trial(study, required=False)
    rerank = study.user_attrs.get(RERANK_ATTR) or {}
    standalone = {r["trial"]: r["standalone_val_accuracy"] for r in rerank.get("candidates", [])}
    shown = [m for m in METHODS if len(encoding.space.choices(m)) > 1 or any(encoding.space.choices(m))]
    rows = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        row: dict[str, Any] = {
            "trial": t.number,
            "state": t.state.name,
            "pick": pick is not None and t.number == pick.number,
            "val_accuracy": float(t.values[0]) if t.values else None,
            "standalone_val_accuracy": standalone.get(t.number),
            "n_params": attrs.get("n_params"),
            "n_params_with_head": attrs.get("n_params_with_head"),
        }
        for m in shown:
            if METHODS[m].site == "block":
                row[f"params_{m}"] = attrs.get(f"params_{m}")
        complete = all(name in t.params for name in encoding.names)
        subnet = encoding.decode_trial(t) if complete else None
        for m in shown:
            sizes = subnet.sizes(m) if subnet is not None else None
            row[f"sizes_{m}"] = (" ".join(map(str, sizes)) if isinstance(sizes, tuple) else sizes)
        row["source"] = attrs.get("single_method") or attrs.get("source") or "sampler"
        row["fail_reason"] = attrs.get("fail_reason")
        rows.append(row)
    frame = pd.DataFrame(rows)
    for column in frame.columns:  # counts stay integers where some trials have none (pandas' nullable Int64)
        if column in ("trial", "n_params", "n_params_with_head") or column.startswith("params_"):
            frame[column] = frame[column].astype("Int64")
    return frame


def _cell(value: Any) -> str:
    import pandas as pd

    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return "**pick**" if value else ""
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "\\|")


def table_markdown(study: optuna.Study, frame) -> str:
    """The table as markdown, headed by what "pick" and the accuracies mean."""
    pick = frame[frame["pick"]]
    lines = [f"# {study.study_name}: {len(frame)} trials", ""]
    if len(pick):
        row = pick.iloc[0]
        decided = (f"stand-alone val accuracy {row['standalone_val_accuracy']:.4f} (the re-rank)"
                   if isinstance(row["standalone_val_accuracy"], float) and not math.isnan(row["standalone_val_accuracy"])
                   else f"val accuracy {row['val_accuracy']:.4f}")
        lines += [f"The pick (what `best_subnet.yaml` holds) is trial {int(row['trial'])}, decided by its {decided}. "
                  "`val_accuracy` is the search's fitness (weights inherited from the supernet unless "
                  "`search.fitness: standalone`); `standalone_val_accuracy` is the re-rank's, after a short "
                  "training on the train split.", ""]
    columns = list(frame.columns)
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "|".join("---:" if frame[c].dtype.kind in "if" else "---" for c in columns) + "|")
    for record in frame.to_dict("records"):
        lines.append("| " + " | ".join(_cell(_native(record[c])) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _native(value: Any) -> Any:
    """numpy scalars (what pandas hands back) as Python ones, for formatting."""
    item = getattr(value, "item", None)
    return item() if callable(item) else value


def write_trial_table(study: optuna.Study, csv_path: str | os.PathLike,
                      md_path: str | os.PathLike | None = None) -> dict[str, Path]:
    """Write the table as CSV (``csv_path``) and markdown (``md_path``, default: beside it, ``.md``)."""
    csv_path = Path(csv_path)
    md_path = Path(md_path) if md_path is not None else csv_path.with_suffix(".md")
    frame = trial_table(study)
    with atomic_path(csv_path) as tmp:
        frame.to_csv(tmp, index=False)
    write_text_atomic(md_path, table_markdown(study, frame))
    return {"trials_csv": csv_path, "trials_md": md_path}
