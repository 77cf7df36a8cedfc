"""Screenshots of stock optuna-dashboard on a unitune run's study, taken with headless Chromium.

What it shows and checks (issue 12): the objective is named (``val_accuracy``), the study note
carries the budget and the chosen subnet, each evaluated trial's note shows the per-block *sizes*
and per-method parameter counts, and the trial the dashboard serves as best is the trial of
``best_subnet.yaml`` (read through optuna-dashboard's own HTTP API and through Optuna's).

    unitune run --config configs/demo.yaml --out runs/demo
    python benchmarks/dashboard_screenshots.py runs/demo --out benchmarks/logs/dashboard

Needs a Chromium binary (Debian: ``apt-get install -y chromium``). The dashboard is served by
unitune's own ``dashboard_app`` (optuna-dashboard's WSGI app behind the loopback Host check) on a
free loopback port in a thread; nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

import optuna
import yaml

from unitune.search.dashboard import dashboard_app
from unitune.search.export import run_folder_storage


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args) -> None:  # one line per request would drown the report
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def _choices(study: optuna.Study):
    """(stored distribution, the space's sizes for that method) per searched parameter."""
    space = study.user_attrs.get("space") or {}
    for trial in study.get_trials(deepcopy=False)[:1]:
        for name, dist in trial.distributions.items():
            method = name.split(".")[0]
            yield dist, space.get(method, [])


def screenshot(chromium: str, url: str, path: Path, size: tuple[int, int], wait_ms: int) -> float:
    """One page as a PNG; seconds taken. The dashboard is a single-page app that loads its data
    over the API, so Chromium gets a virtual-time budget to let it settle before the capture."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}",
                        f"--window-size={size[0]},{size[1]}", f"--virtual-time-budget={wait_ms}",
                        f"--screenshot={path}", url],
                       check=True, capture_output=True, timeout=180)
    if not path.is_file() or path.stat().st_size < 10_000:
        raise SystemExit(f"{path}: no screenshot (or a blank one) of {url}")
    return time.perf_counter() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a unitune run folder (its study.db and best_subnet.yaml)")
    ap.add_argument("--out", default="benchmarks/logs/dashboard", help="folder for the PNGs and report.json")
    ap.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"),
                    help="the Chromium binary (default: chromium on PATH)")
    ap.add_argument("--wait-ms", type=int, default=15000, help="virtual time Chromium lets the page load")
    args = ap.parse_args()
    if not args.chromium:
        raise SystemExit("no chromium on PATH: apt-get install -y chromium, or give --chromium")
    run, out = Path(args.run), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # Optuna's view: the study, its best trial, and the file unitune wrote.
    storage = f"sqlite:///{run_folder_storage(run)}"
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    meta = yaml.safe_load((run / "best_subnet.yaml").read_text())["meta"]
    optuna_best = study.best_trial.number if len(study.directions) == 1 else None

    port = _free_port()
    server = make_server("127.0.0.1", port, dashboard_app(run), handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    try:
        # optuna-dashboard's view, through its own API (what the browser pages render).
        studies = _get_json(f"{base}/api/studies")["study_summaries"]
        study_id = studies[0]["study_id"]
        detail = _get_json(f"{base}/api/studies/{study_id}")
        dashboard_best = [t["number"] for t in detail["best_trials"]]
        chosen = next(t for t in detail["trials"] if t["number"] == meta["trial"])
        pages = {
            "study.png": (f"{base}/dashboard/studies/{study_id}", (1500, 1300)),
            "best_trial.png": (f"{base}/dashboard/studies/{study_id}/trials?numbers={meta['trial']}", (1500, 1500)),
            "study_note.png": (f"{base}/dashboard/studies/{study_id}/note", (1500, 1100)),
            # importance, slice and contour plots: their axes read in sizes (ranks, widths, tokens)
            "analytics.png": (f"{base}/dashboard/studies/{study_id}/analytics", (1500, 2600)),
        }
        seconds = {name: round(screenshot(args.chromium, url, out / name, size, args.wait_ms), 1)
                   for name, (url, size) in pages.items()}
    finally:
        server.shutdown()

    report = {
        "run": str(run),
        "study": study.study_name,
        "trials": len(detail["trials"]),
        "objective_names": detail.get("objective_names"),
        "best_subnet_yaml_trial": meta["trial"],
        "optuna_best_trial": optuna_best,
        "dashboard_best_trials": dashboard_best,
        "study_note_names_budget": f"{study.user_attrs['budget']:,}" in detail["note"]["body"],
        "chosen_trial_note": chosen["note"]["body"],
        "screenshots": {name: str(out / name) for name in pages},
        "seconds": seconds,
        "chromium": subprocess.run([args.chromium, "--version"], capture_output=True, text=True).stdout.strip(),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "chosen_trial_note"}, indent=2))
    # The dashboard's star is the search's best val (Optuna's best trial); the pick (best_subnet.yaml)
    # is that trial, or, after a re-rank, the trial whose note says it is the pick and why.
    report["params_in_sizes"] = all(set(d.choices) <= set(sizes) for d, sizes in _choices(study))
    ok = (optuna_best is None or optuna_best in dashboard_best) and report["study_note_names_budget"] \
        and "| block |" in report["chosen_trial_note"] and report["params_in_sizes"] \
        and (meta["trial"] == optuna_best or report["chosen_trial_note"].lstrip("#* ").startswith("The pick"))
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print("the dashboard's star is the search's best, the pick's note says it is the pick, params read in sizes"
          if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
