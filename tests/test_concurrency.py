"""Four worker processes on one storage finish one study together (issue 7): exactly the requested
number of COMPLETE trials, every one within budget and counted exactly, nothing left RUNNING or
WAITING, and every worker contributed.

Storages: a SQLite file and an Optuna journal file always; PostgreSQL when a server is given in
``UNITUNE_TEST_POSTGRES_URL`` (``.ci/run`` starts one on loopback), otherwise that case is skipped
and says why. The workers run ``tests/concurrent_worker.py`` with a synthetic fitness, so the test
measures the storage and the trial accounting, not a model.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search_util import decode_independently, n_params
from unitune.search.storage import open_storage
from unitune.supernet import SearchSpace

HERE = Path(__file__).parent
N_WORKERS, N_TRIALS, BUDGET = 4, 24, 6000
POSTGRES = os.environ.get("UNITUNE_TEST_POSTGRES_URL")


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> dict[str, tuple[str, str, list[int]]]:
    """Run the four workers once over every storage; {kind: (storage, study name, worker pids)}."""
    tmp = tmp_path_factory.mktemp("concurrency")
    study = f"four-{uuid.uuid4().hex[:8]}"  # unique on a shared server
    storages = {"sqlite": str(tmp / "study.db"), "journal": f"journal:{tmp / 'study.log'}"}
    if POSTGRES:
        storages["postgresql"] = POSTGRES
    ready = tmp / "ready"
    ready.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    procs = [subprocess.Popen([sys.executable, str(HERE / "concurrent_worker.py"), str(N_TRIALS), str(seed), str(ready),
                               str(N_WORKERS), study, *storages.values()],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for seed in range(N_WORKERS)]
    try:
        outputs = [p.communicate(timeout=400)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out
    yield {kind: (spec, study, [p.pid for p in procs]) for kind, spec in storages.items()}
    if POSTGRES:
        optuna.delete_study(study_name=study, storage=POSTGRES)


@pytest.mark.parametrize("kind", ["sqlite", "journal", "postgresql"])
def test_four_workers_complete_exactly_the_requested_trials_within_budget(kind, finished):
    if kind == "postgresql" and not POSTGRES:
        pytest.skip("no PostgreSQL server: set UNITUNE_TEST_POSTGRES_URL (as .ci/run does) to run this case")
    spec, study_name, pids = finished[kind]
    study = optuna.load_study(study_name=study_name, storage=open_storage(spec, create=False))
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == N_TRIALS
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    space = SearchSpace()
    for t in complete:
        subnet = decode_independently(t.params, space, depth=4)
        assert t.user_attrs["n_params"] == n_params(subnet) <= BUDGET
    # Only empty trials of the race for the last slots, and trials that stepped back for another
    # trial's subnet, failed: no evaluated subnet was thrown away, none was evaluated twice.
    for t in trials:
        if t.state == TrialState.FAIL:
            reason = t.user_attrs["fail_reason"]
            assert reason.startswith(("surplus", "duplicate")), reason
            assert "val_accuracy" not in t.user_attrs
            if reason.startswith("surplus"):
                assert not t.params
    assert len({tuple(sorted(t.params.items())) for t in complete}) == N_TRIALS
    assert {int(t.user_attrs["worker"].split(":")[1]) for t in complete} == set(pids)
    # Four workers, four worker numbers and four different sampler seeds, recorded on the trials.
    assert len({(t.user_attrs["worker_index"], t.user_attrs["sampler_seed"]) for t in complete
                if "worker_index" in t.user_attrs}) == N_WORKERS
