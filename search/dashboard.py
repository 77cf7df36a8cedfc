"""optuna-dashboard on a unitune study.

Plain ``optuna-dashboard sqlite:///DIR/study.db`` (or ``optuna-dashboard DIR/study.log`` for a
journal) works as well; these helpers accept the same specs as the search (a run folder, a
file, a URL) and build the app in-process.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from optuna.storages import BaseStorage

from unitune.checks import check_port, is_loopback
from unitune.engine.context import STUDY_DB
from unitune.errors import UniTuneError

from .storage import open_storage

RUN_FOLDER_STORAGES = (STUDY_DB, "study.log", "study.journal")


def dashboard_storage(spec: str | os.PathLike | BaseStorage) -> BaseStorage:
    """Open an existing storage; a run folder means its ``study.db`` (or ``study.log``)."""
    if not isinstance(spec, BaseStorage) and Path(str(spec)).is_dir():
        for name in RUN_FOLDER_STORAGES:
            if (Path(spec) / name).is_file():
                return open_storage(Path(spec) / name, create=False)
        raise UniTuneError(f"{spec}: folder holds no study storage (expected one of {list(RUN_FOLDER_STORAGES)})")
    return open_storage(spec, create=False)


# Host header names a browser uses for a server on this machine. A page on evil.example whose
# name is re-pointed at 127.0.0.1 (DNS rebinding) sends "Host: evil.example": refused.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def _is_port(text: str) -> bool:
    """An empty or all-ASCII-digit port (``str.isdigit`` also takes '²' and Arabic digits)."""
    return text == "" or (text.isascii() and text.isdigit())


class LoopbackHostOnly:
    """WSGI middleware: 403 for a request whose Host header is not a loopback name.

    optuna-dashboard's API has no authentication and no Host check, so while it listens on
    127.0.0.1 any web page the user visits could, through DNS rebinding, create and delete
    studies. Checking the Host header is the standard defence (as Jupyter and Django do).
    """

    def __init__(self, app: Any, allowed: tuple[str, ...] = LOOPBACK_HOSTS):
        self.app = app
        self.allowed = {h.lower() for h in allowed}

    @staticmethod
    def host_name(header: str) -> str:
        """``"[::1]:8080"`` -> ``"::1"``, ``"localhost:8080"`` -> ``"localhost"``; ``""`` for a
        header that is not ``host[:port]`` (``"localhost:80@evil.example"`` names no loopback
        host: what follows the colon must be a port, ASCII digits only)."""
        header = header.strip().lower()
        if header.startswith("["):
            name, close, rest = header[1:].partition("]")
            port_ok = rest == "" or (rest[0] == ":" and _is_port(rest[1:]))
            return name if close and port_ok else ""
        if header.count(":") == 1:
            name, _, port = header.partition(":")
            return name if _is_port(port) else ""
        return header

    def __call__(self, environ: dict, start_response: Any) -> Any:
        if self.host_name(environ.get("HTTP_HOST", "")) not in self.allowed:
            body = b"403 Forbidden: unitune dashboard answers only requests to localhost / 127.0.0.1\n"
            start_response("403 Forbidden", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
            return [body]
        return self.app(environ, start_response)


def check_dashboard_address(host: str, port: int, allow_remote: bool) -> None:
    """Before the storage is opened: a valid port, and a non-loopback host only when asked for."""
    check_port(port)
    if not is_loopback(host) and not allow_remote:
        raise UniTuneError(f"--host {host}: not a loopback address; optuna-dashboard's API has no "
                           f"authentication and anyone who reaches it can delete studies. Pass --allow-remote "
                           f"to serve it anyway (on a trusted network only)")


def dashboard_app(spec: str | os.PathLike | BaseStorage, host: str = "127.0.0.1") -> Any:
    """optuna-dashboard's WSGI application for the storage ``spec``; on a loopback ``host``
    wrapped in :class:`LoopbackHostOnly`."""
    import optuna_dashboard

    app = optuna_dashboard.wsgi(dashboard_storage(spec))
    return LoopbackHostOnly(app) if is_loopback(host) else app


def serve_wsgi(app: Any, host: str, port: int) -> None:
    """Serve ``app`` until interrupted (wsgiref, as ``optuna-dashboard`` itself does)."""
    from wsgiref.simple_server import make_server

    try:
        server = make_server(host, port, app)
    except OSError as e:  # port in use, host not on this machine, a privileged port
        raise UniTuneError(f"dashboard: cannot listen on {host}:{port} ({e.strerror or e})") from None
    with server:
        server.serve_forever()


def serve_dashboard(spec: str | os.PathLike | BaseStorage, host: str = "127.0.0.1", port: int = 8080,
                    allow_remote: bool = False) -> None:
    """Serve the dashboard until interrupted. Everything is checked (address, then storage) before
    the banner; a remote host gets a warning on stderr first."""
    check_dashboard_address(host, port, allow_remote)
    app = dashboard_app(spec, host)
    if not is_loopback(host):
        print(f"unitune: warning: serving on {host}: optuna-dashboard's API has no authentication; "
              f"anyone who reaches this port can change and delete studies", file=sys.stderr)
    print(f"dashboard: http://{host}:{port} (Ctrl-C to stop)")
    serve_wsgi(app, host, port)
