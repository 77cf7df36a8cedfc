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

    def evaluate(subnet):
        time.sleep(SLEEP)
        return synthetic_accuracy(subnet)

    for storage in sys.argv[6:]:
        run_search(evaluate, SearchSpace(), dims, BUDGET, n_trials, storage=storage, study_name=study, sampler="tpe",
                   seed=0, sampler_options=dict(n_startup_trials=4), progress=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
