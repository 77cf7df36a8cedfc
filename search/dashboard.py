"""optuna-dashboard on a unitune study.

Plain ``optuna-dashboard sqlite:///DIR/study.db`` (or ``optuna-dashboard DIR/study.log`` for a
journal) works as well; these helpers accept the same specs as the search (a run folder, a
file, a URL) and build the app in-process.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from optuna.storages import BaseStorage

from unitune.errors import UniTuneError

from .storage import open_storage

RUN_FOLDER_STORAGES = ("study.db", "study.log", "study.journal")


def dashboard_storage(spec: str | os.PathLike | BaseStorage) -> BaseStorage:
    """Open an existing storage; a run folder means its ``study.db`` (or ``study.log``)."""
    if not isinstance(spec, BaseStorage) and Path(str(spec)).is_dir():
        for name in RUN_FOLDER_STORAGES:
            if (Path(spec) / name).is_file():
                return open_storage(Path(spec) / name, create=False)
        raise UniTuneError(f"{spec}: folder holds no study storage (expected one of {list(RUN_FOLDER_STORAGES)})")
    return open_storage(spec, create=False)


def dashboard_app(spec: str | os.PathLike | BaseStorage) -> Any:
    """optuna-dashboard's WSGI application for the storage ``spec``."""
    import optuna_dashboard

    return optuna_dashboard.wsgi(dashboard_storage(spec))


def serve_dashboard(spec: str | os.PathLike | BaseStorage, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve the dashboard until interrupted (wsgiref, as ``optuna-dashboard`` does)."""
    import optuna_dashboard

    optuna_dashboard.run_server(dashboard_storage(spec), host=host, port=port)
