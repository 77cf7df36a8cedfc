"""One progress style for every training stage (pretrain, supernet, retrain).

On a terminal: one tqdm bar per *stage* over all its epochs, counted in images, so its rate is
images/s and its ETA is the stage's, with the running loss and the stage's metric in the
postfix; each finished epoch also leaves one line above the bar. Anywhere else (a log file, a
pipe, CI) there is no bar, which would write hundreds of carriage-return updates: only the one
line per epoch, so a log stays about one line per epoch per stage. Everything goes to stderr,
as tqdm does, so stdout keeps the results.

An epoch line that would not fit the terminal (off a terminal: ``COLUMNS``, else 80 columns)
continues on an indented next line, broken between two fields, never inside a number.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from typing import IO, Any

from tqdm import tqdm


def is_terminal(stream: IO | None = None) -> bool:
    stream = stream or sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60:02d}:{rest % 60:02d}"


def format_metrics(metrics: dict[str, Any]) -> str:
    return "  ".join(_fields(metrics))


def _fields(metrics: dict[str, Any]) -> list[str]:
    return [f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()]


def line_width(stream: IO | None = None) -> int:
    """Columns an epoch line may take: the terminal's, else ``COLUMNS``, else 80."""
    stream = stream or sys.stderr
    if is_terminal(stream):
        try:
            return os.get_terminal_size(stream.fileno()).columns
        except (AttributeError, ValueError, OSError):
            pass
    return shutil.get_terminal_size((80, 24)).columns


def wrap_fields(fields: list[str], width: int, indent: int) -> str:
    """``fields`` joined by two spaces; a field that would pass ``width`` starts a new line,
    indented by ``indent`` spaces (a field longer than a line stays whole)."""
    lines, line = [], ""
    for field in fields:
        if line and len(line) + 2 + len(field) > width:
            lines.append(line)
            line = " " * indent + field
        else:
            line = f"{line}  {field}" if line else field
    return "\n".join([*lines, line])


class StageProgress:
    """Progress of one stage of ``epochs`` epochs of ``images_per_epoch`` images each.

    ``step(images, loss)`` after each optimiser step (``loss`` the epoch's running mean so far),
    ``epoch_end(epoch, **metrics)`` after each epoch (``epoch`` counted from 0), ``close()`` at
    the end. ``start_epoch`` / ``start_images`` resume a stage part-way: the rate and ETA count
    only what this process trains. ``enabled=False`` prints nothing at all.
    """

    def __init__(self, stage: str, epochs: int, images_per_epoch: int, *, enabled: bool = True,
                 start_epoch: int = 0, start_images: int = 0, stream: IO | None = None, metric: str = ""):
        self.stage = stage
        self.epochs = epochs
        self.images_per_epoch = images_per_epoch
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.metric = metric
        self.bar_shown = enabled and is_terminal(self.stream)
        initial = start_epoch * images_per_epoch + start_images
        self.started = time.perf_counter()
        self.initial = initial
        self.done = initial
        self.epoch_started = self.started
        self.epoch_images = 0
        self.postfix: dict[str, str] = {}
        self.bar = tqdm(total=epochs * images_per_epoch, initial=initial, desc=stage, unit="img", unit_scale=True,
                        dynamic_ncols=True, disable=not self.bar_shown, file=self.stream, leave=False,
                        smoothing=0.1)

    def step(self, images: int, loss: float | None = None) -> None:
        self.done += images
        self.epoch_images += images
        if not self.bar_shown:
            return
        if loss is not None:
            self.postfix["loss"] = f"{loss:.4f}"
        self.bar.set_postfix(self.postfix, refresh=False)
        self.bar.update(images)

    def epoch_end(self, epoch: int, lr: float | None = None, **metrics: Any) -> dict[str, Any]:
        """One line for the finished epoch:
        ``[stage] epoch 3/40  loss 0.4012  val_acc 0.8123  lr 3.2e-04  1,234 img/s  eta 01:23``
        (``lr``: the learning rate at the epoch's end), wrapped between fields to the width.
        Returns the rate and seconds of the epoch (for logs)."""
        now = time.perf_counter()
        seconds = now - self.epoch_started
        rate = self.epoch_images / max(seconds, 1e-9)
        left = self.epochs * self.images_per_epoch - self.done
        overall = (self.done - self.initial) / max(now - self.started, 1e-9)
        eta = _clock(left / overall) if overall > 0 and left > 0 else "00:00"
        if self.enabled:
            head = f"[{self.stage}]"
            fields = [f"{head} epoch {epoch + 1}/{self.epochs}", *_fields(metrics),
                      *([f"lr {lr:.1e}"] if lr is not None else []), f"{rate:,.0f} img/s", f"eta {eta}"]
            line = wrap_fields(fields, line_width(self.stream), len(head) + 1)
            if self.bar_shown:
                for key in ("loss", self.metric):
                    if key and key in metrics:
                        self.postfix[key] = f"{metrics[key]:.4f}"
                self.bar.set_postfix(self.postfix, refresh=True)
                self.bar.write(line, file=self.stream)
            else:
                print(line, file=self.stream, flush=True)
        self.epoch_started, self.epoch_images = now, 0
        return {"images_per_s": rate, "seconds": seconds}

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> "StageProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
