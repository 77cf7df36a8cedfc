"""Several workers and killed workers on one storage: the study still ends with exactly the
requested number of COMPLETE trials, none lost and none evaluated twice."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search_util import synthetic_accuracy, tiny_dims
from unitune.search import make_sampler, recover_dead_trials, run_search
from unitune.supernet.encoding import SubnetEncoding
from unitune.search.objective import SubnetObjective
from unitune.search.seeds import worker_seed
from unitune.search.storage import worker_is_dead, worker_token
from unitune.supernet import SearchSpace

BUDGET = 6000
TESTS = Path(__file__).parent

WORKER = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from search_util import synthetic_accuracy, tiny_dims
from unitune.search import run_search
from unitune.supernet import SearchSpace

storage, n_trials, sleep, seed, ready_dir, n_workers = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5], int(sys.argv[6])
dims = tiny_dims()
if ready_dir != "-":  # a barrier, so that the workers really overlap
    Path(ready_dir, str(seed)).touch()
    while len(list(Path(ready_dir).iterdir())) < n_workers:
        time.sleep(0.05)

def evaluate(subnet):
    time.sleep(sleep)
    return synthetic_accuracy(subnet)

run_search(evaluate, SearchSpace(), dims, {budget}, n_trials, storage=storage, study_name="shared", sampler="tpe",
           seed=0, sampler_options=dict(n_startup_trials=3), progress=False)
"""


def start_worker(tmp_path, storage, n_trials, sleep, seed, ready_dir="-", n_workers=1) -> subprocess.Popen:
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(TESTS), budget=BUDGET))
    args = [sys.executable, str(script), str(storage), str(n_trials), str(sleep), str(seed), str(ready_dir), str(n_workers)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def load(db) -> optuna.Study:
    return optuna.load_study(study_name="shared", storage=f"sqlite:///{db}")


def key(params: dict) -> str:
    return json.dumps(params, sort_keys=True)


def test_sigkill_mid_trial_then_restart_loses_and_duplicates_nothing(tmp_path):
    db = tmp_path / "study.db"
    n_trials = 6
    proc = start_worker(tmp_path, db, n_trials, sleep=0.5, seed=0)
    victim = None
    storage = None
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
            try:
                storage = storage or optuna.storages.RDBStorage(f"sqlite:///{db}")
                trials = optuna.load_study(study_name="shared", storage=storage).trials
            except Exception:  # the file or the study is still being created
                continue
            complete = [t for t in trials if t.state == TrialState.COMPLETE]
            running = [t for t in trials if t.state == TrialState.RUNNING and "n_params" in t.user_attrs]
            if len(complete) >= 2 and running:  # evaluating: params and attributes are stored
                victim = running[0]
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        if proc.poll() is None and victim is None:
            proc.kill()
        proc.wait()
    assert victim is not None, proc.stdout.read()
    assert proc.returncode == -signal.SIGKILL

    before = load(db).trials
    kept = {t.number: (t.params, t.values) for t in before if t.state == TrialState.COMPLETE}
    stuck = [t for t in before if t.state == TrialState.RUNNING]
    assert [t.number for t in stuck] == [victim.number]
    victim = stuck[0]  # as stored when the worker died: all parameters, evaluation under way
    assert victim.user_attrs["worker"].split(":")[1] == str(proc.pid)
    assert len(victim.params) == 17 and "n_params" in victim.user_attrs and "val_accuracy" not in victim.user_attrs

    # Restart (in this process): the dead worker's trial is failed and its subnet re-run.
    result = run_search(synthetic_accuracy, SearchSpace(), tiny_dims(), BUDGET, n_trials, storage=db,
                        study_name="shared", sampler="tpe", seed=0, sampler_options=dict(n_startup_trials=3),
                        progress=False)
    after = load(db).trials
    complete = [t for t in after if t.state == TrialState.COMPLETE]
    assert len(complete) == n_trials == result.n_complete
    assert not [t for t in after if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert {t.number: (t.params, t.values) for t in complete if t.number in kept} == kept
    dead = next(t for t in after if t.number == victim.number)
    assert dead.state == TrialState.FAIL and "died while running this trial" in dead.user_attrs["fail_reason"]
    retries = [t for t in complete if t.user_attrs.get("retry_of") == victim.number]
    assert len(retries) == 1 and retries[0].params == victim.params
    assert retries[0].system_attrs["failed_trial"] == victim.number
    assert sum(key(t.params) == key(victim.params) for t in complete) == 1
    assert len({key(t.params) for t in complete}) == n_trials


def test_two_workers_finish_one_study_together(tmp_path):
    """A worker process and this test process (the second worker, already warm) share one study."""
    db = tmp_path / "study.db"
    ready = tmp_path / "ready"
    ready.mkdir()
    n_trials = 10
    proc = start_worker(tmp_path, db, n_trials, sleep=0.3, seed=1, ready_dir=ready, n_workers=2)
    try:
        deadline = time.time() + 120
        while not list(ready.iterdir()) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        (ready / "2").touch()  # release the barrier: both start now

        def evaluate(subnet):
            time.sleep(0.3)
            return synthetic_accuracy(subnet)

        # Both workers search with seed 0, as two `unitune search` workers sharing a config do.
        run_search(evaluate, SearchSpace(), tiny_dims(), BUDGET, n_trials, storage=db, study_name="shared",
                   sampler="tpe", seed=0, sampler_options=dict(n_startup_trials=3), progress=False)
        output = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output
    trials = load(db).trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == n_trials
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # Both workers contributed, and the only failures are empty "surplus" trials of the last slot
    # race and "duplicate" trials that stepped back for another trial's subnet, never evaluated.
    pids = {t.user_attrs["worker"].split(":")[1] for t in complete}
    assert pids == {str(proc.pid), str(os.getpid())}
    assert_failures_never_evaluated(trials)
    assert all(t.user_attrs["n_params"] <= BUDGET for t in complete)
    assert len({key(t.params) for t in complete}) == n_trials
    # Each worker drew its own sampler seed from its own seed and worker number, recorded.
    study = load(db)
    workers = {k: v for k, v in study.user_attrs.items() if k.startswith("worker.")}
    assert sorted(workers) == ["worker.000", "worker.001"]
    assert len({w["seed"] for w in workers.values()}) == 2
    for w in workers.values():
        index = next(int(k[7:]) for k, v in workers.items() if v is w)
        assert w["seed"] == worker_seed(w["study_seed"], index)
    by_pid = {t.user_attrs["worker"].split(":")[1]: (t.user_attrs["worker_index"], t.user_attrs["sampler_seed"])
              for t in complete}
    assert len(set(by_pid.values())) == 2


def assert_failures_never_evaluated(trials) -> None:
    for t in trials:
        if t.state == TrialState.FAIL:
            reason = t.user_attrs["fail_reason"]
            assert reason.startswith(("surplus", "duplicate")), reason
            assert "val_accuracy" not in t.user_attrs and "eval_seconds" not in t.user_attrs
            if reason.startswith("surplus"):
                assert not t.params


# ---- recovery rules, unit by unit --------------------------------------------------------------


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_worker_liveness_rules():
    assert not worker_is_dead(worker_token())
    assert worker_is_dead(f"{socket.gethostname()}:{dead_pid()}:")
    mine = worker_token()
    host, pid, start = mine.rsplit(":", 2)
    if start:  # /proc is there: a reused pid (same pid, other start time) is a dead worker
        assert worker_is_dead(f"{host}:{pid}:{int(start) + 1}")
    assert not worker_is_dead(f"some-other-host:{dead_pid()}:")  # cannot prove it from here
    assert not worker_is_dead("garbage")


def test_recover_dead_trials_fails_and_requeues_only_provably_dead_ones():
    space = SearchSpace()
    enc = SubnetEncoding(space, 4, tiny_dims())
    study = optuna.create_study(direction="maximize")
    tokens = {
        "dead": f"{socket.gethostname()}:{dead_pid()}:",
        "alive": worker_token(),
        "remote": f"elsewhere:{dead_pid()}:",
    }
    numbers = {}
    for label, token in tokens.items():
        trial = study.ask()
        trial.set_user_attr("worker", token)
        for name, d in enc.distributions.items():
            trial.suggest_categorical(name, d.choices)
        numbers[label] = trial.number
    orphan = study.ask()  # died before it wrote its worker attribute
    assert recover_dead_trials(study, enc.distributions, stale_after=3600) == [numbers["dead"]]
    assert recover_dead_trials(study, enc.distributions, stale_after=0) == [orphan.number]
    trials = study.get_trials()
    by_number = {t.number: t for t in trials}
    assert by_number[numbers["dead"]].state == TrialState.FAIL
    assert by_number[numbers["alive"]].state == TrialState.RUNNING
    assert by_number[numbers["remote"]].state == TrialState.RUNNING
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert len(waiting) == 1  # the orphan had no parameters: nothing to retry
    assert waiting[0].params == by_number[numbers["dead"]].params
    assert waiting[0].user_attrs["retry_of"] == numbers["dead"]
    # Recovering again does nothing more.
    assert recover_dead_trials(study, enc.distributions, stale_after=0) == []


def test_retries_stop_after_max_retries():
    enc = SubnetEncoding(SearchSpace(), 4, tiny_dims())
    study = optuna.create_study(direction="maximize")
    token = f"{socket.gethostname()}:{dead_pid()}:"
    rounds = 0
    while True:
        trial = study.ask()  # pops the retry if there is one
        trial.set_user_attr("worker", token)
        for name, d in enc.distributions.items():
            trial.suggest_categorical(name, d.choices)
        recover_dead_trials(study, enc.distributions, max_retries=2)
        rounds += 1
        if not study.get_trials(states=(TrialState.WAITING,)):
            break
    assert rounds == 3  # the original and two retries
    assert len({key(t.params) for t in study.trials}) == 1


@pytest.mark.skipif(not hasattr(signal, "SIGINT"), reason="needs POSIX signals")
def test_interrupted_trial_is_handed_back():
    calls = []

    def evaluate(subnet):
        calls.append(subnet)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return synthetic_accuracy(subnet)

    storage = optuna.storages.InMemoryStorage()
    with pytest.raises(KeyboardInterrupt):
        run_search(evaluate, SearchSpace(), tiny_dims(), BUDGET, 5, storage=storage, sampler="random", progress=False)
    result = run_search(synthetic_accuracy, SearchSpace(), tiny_dims(), BUDGET, 5, storage=storage, sampler="random",
                        progress=False)
    trials = result.study.trials
    interrupted = next(t for t in trials if t.state == TrialState.FAIL)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 5
    assert [t.params for t in complete if t.user_attrs.get("retry_of") == interrupted.number] == [interrupted.params]


def test_a_worker_that_loses_the_race_for_the_last_slot_hands_its_trial_back():
    enc = SubnetEncoding(SearchSpace(), 4, tiny_dims())
    study = optuna.create_study(direction="maximize")
    done = study.ask()
    for name, d in enc.distributions.items():
        done.suggest_categorical(name, d.choices)
    study.tell(done, 0.7)
    other = study.ask()  # another worker is running the second and last slot
    other.set_user_attr("worker", worker_token())
    seed = {name: 0 for name in enc.names} | {"lora.00": 1}
    study.enqueue_trial(seed, user_attrs={"source": "seed"})
    evaluated = []
    objective = SubnetObjective(lambda s: evaluated.append(s) or 0.9, enc, BUDGET, ("acc",), n_trials=2)
    study.optimize(objective, n_trials=3)  # stops after the surplus trial
    trials = study.get_trials()
    assert not evaluated
    surplus = trials[2]
    assert surplus.state == TrialState.FAIL and surplus.user_attrs["fail_reason"].startswith("surplus")
    assert surplus.params == {}
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert len(trials) == 4 and len(waiting) == 1
    assert waiting[0].params == seed and waiting[0].user_attrs["source"] == "seed"


def test_heartbeat_storage_fails_and_retries_a_stale_trial(tmp_path):
    """The server-database path, run on SQLite with heartbeats forced on: a trial whose worker
    stopped beating is failed by the next worker and its subnet evaluated again."""
    from unitune.search import open_storage

    enc = SubnetEncoding(SearchSpace(), 4, tiny_dims())
    storage = open_storage(f"sqlite:///{tmp_path}/hb.db", heartbeat=True, heartbeat_interval=1, grace_period=1,
                           distributions=enc.distributions)
    assert storage.get_heartbeat_interval() == 1
    run_search(synthetic_accuracy, SearchSpace(), tiny_dims(), BUDGET, 2, storage=storage, sampler="random",
               progress=False)
    study = optuna.load_study(study_name="unitune", storage=storage, sampler=make_sampler("random", enc, BUDGET))
    with pytest.warns(UserWarning, match="Heartbeat"):
        remote = study.ask()  # a worker on another machine, which then dies
    remote.set_user_attr("worker", "elsewhere:4242:1")
    for name, d in enc.distributions.items():
        remote.suggest_categorical(name, d.choices)
    storage.record_heartbeat(remote._trial_id)
    time.sleep(2.2)
    # The cap (3) counts the stale RUNNING trial until it is failed: recovery must come first.
    result = run_search(synthetic_accuracy, SearchSpace(), tiny_dims(), BUDGET, 3, storage=storage,
                        sampler="random", progress=False)
    trials = {t.number: t for t in result.study.trials}
    assert trials[remote.number].state == TrialState.FAIL
    complete = [t for t in trials.values() if t.state == TrialState.COMPLETE]
    assert len(complete) == 3
    (retry,) = [t for t in complete if t.user_attrs.get("retry_of") == remote.number]
    assert retry.params == trials[remote.number].params


def test_a_worker_killed_after_sampling_before_its_objective_is_recovered(tmp_path):
    """The sampler stores a trial's parameters before the objective runs; a worker that dies in
    between left a RUNNING trial with parameters and no worker token, which no rule could prove
    dead, so it held a slot of --trials for good (a resumed `unitune run` then ended one trial
    short). The token is now written before sampling."""
    storage = f"sqlite:///{tmp_path}/s.db"
    run_search(synthetic_accuracy, SearchSpace(), tiny_dims(), BUDGET, 1, storage=storage, sampler="random",
               progress=False)
    child = f"""
import os, optuna
from search_util import tiny_dims
from unitune.search import make_sampler
from unitune.supernet import SearchSpace
from unitune.supernet.encoding import SubnetEncoding
enc = SubnetEncoding(SearchSpace(), 4, tiny_dims())
study = optuna.load_study(study_name="unitune", storage={storage!r}, sampler=make_sampler("random", enc, {BUDGET}))
trial = study.ask()
for name, d in enc.distributions.items():
    trial.suggest_categorical(name, d.choices)
os._exit(0)  # dies before any objective code runs
"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    subprocess.run([sys.executable, "-c", child], env=env, check=True, timeout=300)
    study = optuna.load_study(study_name="unitune", storage=storage)
    (orphan,) = study.get_trials(states=(TrialState.RUNNING,))
    assert orphan.params and orphan.user_attrs.get("worker")
    enc = SubnetEncoding(SearchSpace(), 4, tiny_dims())
    assert recover_dead_trials(study, enc.distributions) == [orphan.number]
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].params == orphan.params


def test_a_trial_taken_by_a_worker_that_died_before_recording_itself_is_recovered(tmp_path):
    """Killed between taking a trial from the storage and its first hook, a worker leaves a
    RUNNING trial with no token. When every worker the study registered is dead or is the
    caller (idle between trials), that trial is provably orphaned: failed and re-enqueued, not
    left holding a slot of --trials (a resumed run ended one trial short)."""
    storage = f"sqlite:///{tmp_path}/s.db"
    study = run_search(synthetic_accuracy, SearchSpace(), tiny_dims(), BUDGET, 1, storage=storage, sampler="random",
                       progress=False).study
    enc = SubnetEncoding(SearchSpace(), 4, tiny_dims())
    orphan = study._storage.create_new_trial(study._study_id)  # RUNNING, no token, no params
    number = study._storage.get_trial(orphan).number
    assert recover_dead_trials(study, enc.distributions) == []  # the caller's state unknown: kept
    study.set_user_attr("worker.001", {"worker": worker_token(1), "seed": 0, "study_seed": 0})  # pid 1 lives
    assert recover_dead_trials(study, enc.distributions, idle_token=worker_token()) == []
    study.set_user_attr("worker.001", {"worker": "nohost:1:1", "seed": 0, "study_seed": 0})  # elsewhere: unknown
    assert recover_dead_trials(study, enc.distributions, idle_token=worker_token()) == []
    study.set_user_attr("worker.001", {"worker": f"{socket.gethostname()}:999999999:1", "seed": 0, "study_seed": 0})
    assert recover_dead_trials(study, enc.distributions, idle_token=worker_token()) == [number]
    assert study._storage.get_trial(orphan).state == TrialState.FAIL
