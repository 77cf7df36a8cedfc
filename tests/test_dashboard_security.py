"""``unitune dashboard``: optuna-dashboard's API has no authentication, so (issue 14)

- on the loopback default, a request whose Host header is not a loopback name (a DNS-rebinding
  page) gets 403 and never reaches the API: no study is created or deleted;
- a non-loopback ``--host`` needs ``--allow-remote`` and then prints a one-line warning.

The middleware is called as a WSGI app; no server is started.
"""

from __future__ import annotations

import io
import json
from wsgiref.util import setup_testing_defaults

import optuna
import pytest

from unitune.commands.cli import main
from unitune.search import dashboard
from unitune.search.dashboard import LoopbackHostOnly, dashboard_app


def call(app, method: str, path: str, host: str | None, body: dict | None = None) -> tuple[str, bytes]:
    environ: dict = {"PATH_INFO": path, "REQUEST_METHOD": method, "QUERY_STRING": ""}
    setup_testing_defaults(environ)
    data = json.dumps(body).encode() if body is not None else b""
    environ.update({"wsgi.input": io.BytesIO(data), "CONTENT_LENGTH": str(len(data)), "CONTENT_TYPE": "application/json"})
    if host is None:
        del environ["HTTP_HOST"]
    else:
        environ["HTTP_HOST"] = host
    status = {}

    def start_response(code, headers, exc_info=None):
        status["code"] = code

    out = b"".join(app(environ, start_response))
    return status["code"], out


@pytest.fixture
def storage(tmp_path):
    path = tmp_path / "study.db"
    optuna.create_study(study_name="demo", storage=f"sqlite:///{path}")
    return path


def names(path) -> list[str]:
    return [s.study_name for s in optuna.get_all_study_summaries(f"sqlite:///{path}")]


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8080", "127.0.0.1.evil.example", "192.168.1.5:8080", None])
def test_foreign_host_cannot_create_or_delete_studies(storage, host):
    app = dashboard_app(storage)
    code, body = call(app, "POST", "/api/studies", host, {"study_name": "pwned", "directions": ["maximize"]})
    assert code.startswith("403") and b"Forbidden" in body
    code, _ = call(app, "DELETE", "/api/studies/1", host)
    assert code.startswith("403")
    code, _ = call(app, "GET", "/api/studies", host)
    assert code.startswith("403")
    assert names(storage) == ["demo"]  # nothing reached optuna-dashboard's API


@pytest.mark.parametrize("host", ["127.0.0.1:8080", "localhost:8080", "LOCALHOST", "[::1]:8080", "127.0.0.1"])
def test_loopback_host_reaches_the_api(storage, host):
    app = dashboard_app(storage)
    code, body = call(app, "GET", "/api/studies", host)
    assert code.startswith("200"), code
    assert [s["study_name"] for s in json.loads(body)["study_summaries"]] == ["demo"]
    code, _ = call(app, "POST", "/api/studies", host, {"study_name": "second", "directions": ["maximize"]})
    assert code.startswith("201"), code
    assert sorted(names(storage)) == ["demo", "second"]


def test_host_name_parsing():
    parse = LoopbackHostOnly.host_name
    assert parse("[::1]:8080") == "::1" and parse("localhost:80") == "localhost" and parse("127.0.0.1") == "127.0.0.1"
    assert parse("evil.example:8080") == "evil.example"
    # What follows the colon must be a port: a userinfo-like or junk suffix names no loopback host.
    for header in ("localhost:8080@evil.example", "127.0.0.1:80@evil.example", "[::1]:80@evil.example",
                   "[::1]evil.example", "localhost:8O80", "localhost:²", "[::1"):
        assert parse(header) == "", header


@pytest.mark.parametrize("host", ["localhost:8080@evil.example", "127.0.0.1:8080@evil.example",
                                  "[::1]:8080@evil.example"])
def test_a_loopback_prefix_with_a_foreign_suffix_is_refused(storage, host):
    app = dashboard_app(storage)
    code, body = call(app, "POST", "/api/studies", host, {"study_name": "pwned", "directions": ["maximize"]})
    assert code.startswith("403") and b"Forbidden" in body
    assert names(storage) == ["demo"]


def test_a_remote_bind_is_not_wrapped_but_needs_consent(storage, monkeypatch, capsys):
    served = {}
    monkeypatch.setattr(dashboard, "serve_wsgi", lambda app, host, port: served.update(app=app, host=host, port=port))
    assert main(["dashboard", str(storage), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--allow-remote" in err and "no authentication" in err
    assert not served
    assert main(["dashboard", str(storage), "--host", "0.0.0.0", "--allow-remote", "--port", "8123"]) == 0
    out, err = capsys.readouterr()
    assert "unitune: warning:" in err and "no authentication" in err and "delete studies" in err
    assert served["host"] == "0.0.0.0" and served["port"] == 8123
    assert not isinstance(served["app"], LoopbackHostOnly)  # a remote host has its own names
    assert main(["dashboard", str(storage)]) == 0  # the default: loopback, wrapped, no warning
    out, err = capsys.readouterr()
    assert err == "" and isinstance(served["app"], LoopbackHostOnly) and served["host"] == "127.0.0.1"
