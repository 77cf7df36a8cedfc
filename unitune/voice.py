"""Warnings as the command line shows them: one line each, in the voice of whoever speaks.

The library warns the Python way (``warnings.warn(..., UniTuneWarning)``, the ``unitune.*``
loggers), so a library user keeps filters, ``pytest.warns`` and ``logging`` configuration. The
CLI installs :func:`tool_voice` around a command, which prints

- unitune's own warnings as ``unitune: warning: <message>``, without Python's
  ``file:line: UserWarning:`` prefix and the source line it quotes;
- other packages' warnings and log records as ``<package>: warning: <message>``, each text
  once per process: timm's "Cosine annealing scheduler will have no effect ..." comes from
  every scheduler built for a one-step schedule, 49 times in one ``compare --quick``.

Deprecation warnings, which Python hides from users by default, go where they went before.

Lines go through ``tqdm.write`` so that a progress bar on the terminal is redrawn below them
rather than torn.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from pathlib import Path
from typing import Callable, Iterator

from .errors import UniTuneWarning


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).strip().splitlines() if part.strip())


def _package_of(filename: str) -> str:
    """The top-level package of the module that ``filename`` is (``timm`` for timm/scheduler/...)."""
    for name, module in list(sys.modules.items()):
        if getattr(module, "__file__", None) == filename:
            return name.partition(".")[0]
    return Path(filename).stem or "python"


class Voice:
    """The printer: one line per message to stderr (read at each call, as pytest's capsys swaps
    it), other packages' repeats dropped."""

    def __init__(self, fallback: Callable = warnings.showwarning) -> None:
        self.seen: set[tuple[str, str]] = set()
        self.fallback = fallback

    def say(self, who: str, level: str, text: str) -> None:
        # unitune's own text keeps its line breaks (the re-rank's tau warning is wrapped on
        # purpose, with indented continuation lines); another package's becomes one line.
        text = str(text).strip() if who == "unitune" else _one_line(text)
        if who != "unitune":
            if (who, text) in self.seen:
                return
            self.seen.add((who, text))
        from tqdm import tqdm

        tqdm.write(f"{who}: {level}: {text}", file=sys.stderr)

    def showwarning(self, message, category, filename, lineno, file=None, line=None) -> None:
        """``warnings.showwarning``'s signature; the source line is never printed."""
        if issubclass(category, (DeprecationWarning, PendingDeprecationWarning)):
            # for developers (hidden by Python's default filters): shown, or recorded under
            # pytest, as they were
            self.fallback(message, category, filename, lineno, file, line)
            return
        who = "unitune" if issubclass(category, UniTuneWarning) else _package_of(filename)
        self.say(who, "warning", str(message))


class _Handler(logging.Handler):
    """Log records of WARNING and above (as Python's last-resort handler shows them), one line each."""

    def __init__(self, voice: Voice):
        super().__init__(logging.WARNING)
        self.voice = voice

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.voice.say(record.name.partition(".")[0] or "python", record.levelname.lower(), record.getMessage())
        except Exception:  # a broken message must not end the run: logging's own policy
            self.handleError(record)


def install() -> Callable[[], None]:
    """Install the one-line printer for warnings and log records; returns what undoes it.
    (Also a process pool's ``initializer``: a worker process prints in the same voice.)"""
    saved = warnings.showwarning
    voice = Voice(saved)
    handler = _Handler(voice)
    warnings.showwarning = voice.showwarning
    logging.getLogger().addHandler(handler)

    def undo() -> None:
        warnings.showwarning = saved
        logging.getLogger().removeHandler(handler)

    return undo


@contextlib.contextmanager
def tool_voice() -> Iterator[None]:
    """While a command runs: warnings and log records as one line each (see the module doc)."""
    undo = install()
    try:
        yield
    finally:
        undo()
