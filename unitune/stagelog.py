"""A training stage's per-epoch log: the JSONL file, plus the loggers the config asks for.

``logging:`` in a run config names extra loggers, one name or a list (default: none):

- ``csv``: ``<log>.csv`` beside the stage's JSONL log (``supernet_log.csv``, ...), one row per
  epoch with the JSONL's values, the columns in the order the keys first appear;
- ``tensorboard``: TensorBoard event files under ``<run>/tensorboard/<stage>/``, written by
  ``torch.utils.tensorboard.SummaryWriter`` (the ``tensorboard`` package): every numeric value
  of an epoch's record as a scalar, its step the record's ``epoch`` (from 0), so
  ``tensorboard --logdir <run>/tensorboard`` shows the stages as runs side by side.

The JSONL log stays the record (``JsonlLog``); the others are rewritten from it
(CSV) or follow it (TensorBoard; a resumed stage purges the events of the epochs it redoes).
When the stage ends, :meth:`StageLog.close` redraws ``<run>/plots/curves.png`` from every
stage's JSONL log (unitune/curves.py).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from .io import atomic_path

TENSORBOARD_DIR = "tensorboard"


class JsonlLog:
    """One JSON object per line. On resume, lines from the epochs to be redone are dropped first.

    Each record rewrites the file atomically (old lines + the new one) instead of appending in
    place: a process killed mid-write leaves the previous, complete log, never a torn last line
    that the resumed run could not parse. A log holds one line per epoch, so this costs nothing.
    """

    def __init__(self, path: str | os.PathLike, resume_epoch: int | None = None):
        self.path = Path(path)
        if resume_epoch is None:
            self.path.unlink(missing_ok=True)
        elif self.path.exists():
            keep = [ln for ln in self.path.read_text().splitlines() if ln.strip()
                    and json.loads(ln).get("epoch", -1) < resume_epoch]
            with atomic_path(self.path) as tmp:
                tmp.write_text("".join(ln + "\n" for ln in keep))

    def write(self, record: dict[str, Any]) -> None:
        previous = self.path.read_text() if self.path.exists() else ""
        with atomic_path(self.path) as tmp:
            tmp.write_text(previous + json.dumps(record) + "\n")

    def read(self) -> list[dict[str, Any]]:
        return [json.loads(ln) for ln in self.path.read_text().splitlines() if ln.strip()] if self.path.exists() else []


class StageLog(JsonlLog):
    """``JsonlLog`` of the stage ``stage`` in the run folder ``run_dir``, mirrored to ``loggers``."""

    def __init__(self, path: str | os.PathLike, stage: str, run_dir: str | os.PathLike,
                 loggers: tuple[str, ...] = (), resume_epoch: int | None = None):
        super().__init__(path, resume_epoch)
        self.stage = stage
        self.run_dir = Path(run_dir)
        self.csv_path = self.path.with_suffix(".csv") if "csv" in loggers else None
        self.writer = None
        if self.csv_path is not None:
            self._write_csv()  # a resume dropped the epochs to redo: so does the CSV
        if "tensorboard" in loggers:
            from torch.utils.tensorboard import SummaryWriter

            folder = self.run_dir / TENSORBOARD_DIR / stage
            if resume_epoch is None and folder.is_dir():  # a fresh start: the old curves go
                for old in folder.glob("events.out.tfevents.*"):
                    old.unlink()
            # purge_step: TensorBoard hides the earlier events of the epochs a resumed stage redoes
            self.writer = SummaryWriter(str(folder), purge_step=resume_epoch or None)

    def write(self, record: dict[str, Any]) -> None:
        super().write(record)
        if self.csv_path is not None:
            self._write_csv()
        if self.writer is not None:
            for key, value in record.items():
                if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(key, value, global_step=record["epoch"])
            self.writer.flush()  # a TensorBoard watching the run sees each epoch as it ends

    def _write_csv(self) -> None:
        records = self.read()
        columns = list(dict.fromkeys(k for r in records for k in r))
        with atomic_path(self.csv_path) as tmp:
            with open(tmp, "w", newline="") as f:
                out = csv.DictWriter(f, columns)
                out.writeheader()
                out.writerows(records)

    def close(self, curves: bool = True) -> None:
        """At the stage's end: close the event file and (``curves``) redraw the run's curves."""
        from .curves import write_curves

        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if curves:
            write_curves(self.run_dir)
