"""One search worker process for ``test_concurrency.py``: a cheap synthetic fitness (no model),
run against each storage given, one after the other, so one process start (importing torch)
serves them all.

    python concurrent_worker.py N_TRIALS WORKER READY_DIR N_WORKERS STUDY STORAGE [STORAGE ...]

The workers wait for each other in READY_DIR first, so that they really run side by side. All of
them search with seed 0, as ``unitune search`` workers sharing one config do: each must still
draw its own sampler seed (issue 14).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from search_util import synthetic_accuracy, tiny_dims  # noqa: E402

from unitune.search import run_search  # noqa: E402
from unitune.supernet import SearchSpace  # noqa: E402

BUDGET = 6000
SLEEP = 0.05  # a trial's "evaluation": long enough for the workers' trials to overlap


def main() -> int:
    n_trials, worker, ready, n_workers, study = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    dims = tiny_dims()
    (ready / str(worker)).touch()
    while len(list(ready.iterdir())) < n_workers:
        time.sleep(0.02)

    for k, storage in enumerate(sys.argv[6:]):
        # Every worker evaluates at least one trial per storage, whatever the scheduler does: a
        # worker's first evaluation waits (a barrier) until every worker holds a trial. The others
        # hold at most N-1 of the N_TRIALS >= N slots meanwhile, so the last one always gets one.
        # Without it, a worker the busy machine started late found the study finished.
        started = ready.with_name(f"{ready.name}-started-{k}")  # beside READY_DIR, which the start barrier counts
        started.mkdir(exist_ok=True)

        def evaluate(subnet, started=started):
            mark = started / str(worker)
            if not mark.exists():
                mark.touch()
                deadline = time.monotonic() + 300  # a dead sibling fails the test, not hangs it
                while len(list(started.iterdir())) < n_workers and time.monotonic() < deadline:
                    time.sleep(0.02)
            time.sleep(SLEEP)
            return synthetic_accuracy(subnet)

        run_search(evaluate, SearchSpace(), dims, BUDGET, n_trials, storage=storage, study_name=study, sampler="tpe",
                   seed=0, sampler_options=dict(n_startup_trials=4), progress=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
