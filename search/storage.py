"""Where a study lives, and how trials of dead workers are found and retried.

Storage specs (:func:`open_storage`):

- ``None``: in memory (tests, benchmarks).
- a path such as ``runs/x/study.db``: a SQLite file (parent folders are created).
- ``journal:PATH``, or a path ending in ``.log``, ``.journal`` or ``.jsonl``: Optuna's journal
  file backend, ``JournalStorage(JournalFileBackend(PATH))`` (many local workers, NFS).
- any SQLAlchemy URL (``sqlite:///...``, ``postgresql://...``, ``mysql+pymysql://...``):
  ``RDBStorage``. A server database (not SQLite) gets Optuna's heartbeat: a worker's trial whose
  heartbeat stops for ``grace_period`` seconds is failed by the next worker, and its
  parameters are enqueued again (:func:`requeue_trial`). That is how several machines recover
  from a dead one.

SQLite and journal files have no heartbeat (heartbeats would add a write per worker every few
seconds to a file every worker locks). For them, and on top of heartbeats, every trial records
its worker as ``host:pid:start-time`` (user attribute ``worker``); before each trial a worker
checks the RUNNING trials of its own host and fails the ones whose process provably no longer
exists (no such pid, a zombie, or a pid reused by a process started at another time), then
re-enqueues their parameters (at most ``max_retries`` times per original trial). A RUNNING
trial from another host is left alone (its death cannot be proven from here); use a server
database with heartbeats for several machines. A RUNNING trial that never got its worker
attribute (the process died within the milliseconds between creating the trial and starting
it) is failed once it is ``stale_after`` seconds old and still has no parameters.

For file storages, recovery and study creation run under an ``fcntl`` lock on
``<file>.unitune-lock``, so two restarted workers never fail or re-enqueue the same trial twice.
The kernel releases that lock when a process dies, so a killed worker never leaves it held; the
file itself exists only while the lock is held (a killed holder may leave an empty one, which the
next holder removes).
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import logging
import os
import random
import socket
import time
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import optuna
from optuna.distributions import BaseDistribution
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from unitune.checks import check_input_file
from unitune.errors import UniTuneError

_logger = logging.getLogger("unitune.search")

JOURNAL_PREFIX = "journal:"
JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")
WORKER_ATTR = "worker"
FAIL_REASON_ATTR = "fail_reason"
RETRY_OF_ATTR = "retry_of"
IMPORTED_ATTR = "imported_from"  # a trial copied from another study (search.tune): "<source study>#<trial number>"


@dataclass(frozen=True)
class StorageSpec:
    kind: str  # "memory", "sqlite", "rdb" or "journal"
    url: str  # what to show a person (password hidden) or give optuna-dashboard
    path: Path | None = None  # the file of a file storage
    creates_folder: bool = False  # a plain path or journal file: its folder is created


def resolve_storage(spec: str | os.PathLike | None) -> StorageSpec:
    """Classify a storage spec without opening it."""
    if spec is None:
        return StorageSpec("memory", "in-memory")
    text = str(spec)
    if text.startswith(JOURNAL_PREFIX):
        path = Path(text[len(JOURNAL_PREFIX) :]).expanduser()
        if not str(path) or str(path) == ".":
            raise UniTuneError(f"storage: {text!r} names no journal file")
        return StorageSpec("journal", str(path), path, creates_folder=True)
    if "://" in text:
        try:
            import sqlalchemy.engine

            url = sqlalchemy.engine.make_url(text)
        except Exception:
            raise UniTuneError(f"storage: {text!r} is not a valid database URL") from None
        shown = url.render_as_string(hide_password=True)
        if url.get_backend_name() == "sqlite":
            path = Path(url.database) if url.database and url.database != ":memory:" else None
            return StorageSpec("sqlite", shown, path)
        return StorageSpec("rdb", shown)
    path = Path(text).expanduser()
    if path.suffix in JOURNAL_SUFFIXES:
        return StorageSpec("journal", str(path), path, creates_folder=True)
    return StorageSpec("sqlite", f"sqlite:///{path.resolve()}", path.resolve(), creates_folder=True)


def open_storage(
    spec: str | os.PathLike | BaseStorage | None,
    *,
    heartbeat_interval: int = 60,
    grace_period: int | None = None,
    distributions: Mapping[str, BaseDistribution] | None = None,
    create: bool = True,
    heartbeat: bool | None = None,
) -> BaseStorage:
    """Open the storage ``spec`` names; an unusable one is a one-line error.

    ``create=False`` (export, dashboard) refuses a storage file that does not exist rather than
    creating an empty one. ``heartbeat``: None gives server databases heartbeats and SQLite none;
    True / False force it for any SQLAlchemy URL. ``distributions`` (the search space) lets a
    heartbeat-failed trial be re-enqueued.
    """
    if isinstance(spec, BaseStorage):
        return spec
    info = resolve_storage(spec)
    if info.path is not None and (not create or info.path.exists()):
        if not info.path.exists():
            raise UniTuneError(f"storage: {info.url!r}: no such file {str(info.path)!r}")
        # A FIFO would block the open forever; where nothing may be created, a 0-byte file would
        # be turned into a fresh Optuna database (a write despite the error): refuse both.
        check_input_file(info.path, "study storage (an SQLite or journal file)", nonempty=not create)
    if info.kind == "memory":
        return optuna.storages.InMemoryStorage()
    try:
        if info.kind == "journal":
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            assert info.path is not None
            info.path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(info.path)))
        url = str(spec)
        engine_kwargs = None
        if info.kind == "sqlite":
            if "://" not in url:  # a plain path: its folder is created (a URL's must exist)
                url = info.url
                assert info.path is not None
                info.path.parent.mkdir(parents=True, exist_ok=True)
            if info.path is not None and info.path.parent.is_dir():
                if not info.path.exists() or info.path.stat().st_size == 0:
                    _init_sqlite_wal(info.path)
            # Several local processes share the file: wait for its lock instead of failing.
            engine_kwargs = {"connect_args": {"timeout": 60}}
        kwargs: dict[str, Any] = {"engine_kwargs": engine_kwargs}
        if info.kind == "rdb" if heartbeat is None else heartbeat:
            kwargs.update(heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                          heartbeat_stale_trial_callback=_HeartbeatRequeue(dict(distributions or {})))
        storage = _open_rdb(url, info.kind == "rdb", **kwargs)
        if info.kind == "sqlite" and create:  # workers; readers (export, dashboard) need no write lock
            _serialize_sqlite_transactions(storage.engine)
        return storage
    except UniTuneError:
        raise
    except Exception as e:  # sqlalchemy / driver errors: unreachable host, missing driver, bad file
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        failure = f"storage: cannot open {info.url!r}: {type(e).__name__}: {first}"
    # Outside the except block, nothing refers to the half-built storage any more (the traceback
    # did): collect it now, so its engine closes its connection and SQLite removes the -wal / -shm
    # files it made. A refused run leaves the storage's folder as it was.
    gc.collect()
    raise UniTuneError(failure)


def _open_rdb(url: str, server: bool, attempts: int = 5, **kwargs: Any) -> optuna.storages.RDBStorage:
    """``RDBStorage(url, **kwargs)``. On a server database, workers that start together on a new,
    empty database race to create Optuna's tables, and all but one fail on a duplicate table or
    type (no file lock can order processes on different machines). The tables exist once the
    winner is through, so a loser simply opens the storage again."""
    import sqlalchemy.exc

    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5.0
                warnings.simplefilter("ignore", ExperimentalWarning)
                return optuna.storages.RDBStorage(url, **kwargs)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            if not server or attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1) * (1 + random.random()))
    raise AssertionError("unreachable")


def _serialize_sqlite_transactions(engine: Any) -> None:
    """Make every transaction on a SQLite storage take the write lock when it begins.

    Python's sqlite3 driver starts a transaction only at the first write, so Optuna's
    ``SELECT ... FOR UPDATE`` (a no-op on SQLite) followed by an ``UPDATE`` is not atomic: two
    workers popping the same WAITING trial (an enqueued seed or retry) both read WAITING and both
    set it RUNNING, and then run one trial twice (seen with four workers starting on a new study
    that holds the single-method seeds: "Cannot tell a COMPLETE trial"). ``BEGIN IMMEDIATE`` at the
    start of each transaction (SQLAlchemy's documented recipe for pysqlite) serializes them; the
    ``timeout`` connect argument makes a worker wait for the lock instead of failing. Optuna's
    transactions are short, so the cost is small; readers in other processes (optuna-dashboard)
    are not affected in WAL mode.
    """
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_implicit_transactions(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None  # we BEGIN ourselves

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections made before the hooks were added are not reused


def _init_sqlite_wal(path: Path) -> None:
    """Create a new SQLite study file in write-ahead-log mode (a persistent setting of the file).

    Optuna commits every suggested parameter and attribute separately; in WAL mode a commit is one
    append and one fsync instead of a rollback journal's several (measured here: 4 ms against
    21 ms a commit), and readers such as optuna-dashboard never block a worker. Like SQLite
    itself, WAL needs a local file system.
    """
    import sqlite3

    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")


@contextlib.contextmanager
def storage_lock(spec: str | os.PathLike | BaseStorage | None) -> Iterator[None]:
    """An inter-process lock for a file storage, and across machines for PostgreSQL / MySQL (an
    advisory lock on the server); a no-op for others or where fcntl is missing."""
    if isinstance(spec, BaseStorage):
        yield
        return
    info = resolve_storage(spec)
    if info.kind == "rdb":
        with _server_lock(str(spec)):
            yield
        return
    if info.path is None:
        yield
        return
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    if not info.path.parent.is_dir():
        if not info.creates_folder:  # a URL into a missing folder: opening it will say so
            yield
            return
        info.path.parent.mkdir(parents=True, exist_ok=True)
    # The lock file lives only while it is held: its holder removes it before unlocking, so a run
    # that is refused (or finds nothing to do) leaves no file behind. A process that waited on the
    # removed file notices that its path now names another file (or none) and locks again.
    lock_path = info.path.with_name(info.path.name + ".unitune-lock")
    while True:
        f = open(lock_path, "a")
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            if os.path.samestat(os.fstat(f.fileno()), os.stat(lock_path)):
                break
        except FileNotFoundError:
            pass
        f.close()
    try:
        yield
    finally:
        lock_path.unlink(missing_ok=True)
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        f.close()


# One advisory-lock key for unitune's short critical sections (joining a study, taking a worker
# number, recovering dead trials): the server-side counterpart of the lock file.
_SERVER_LOCK_KEY = 0x756E6974756E65  # "unitune"


@contextlib.contextmanager
def _server_lock(url: str) -> Iterator[None]:
    """Hold PostgreSQL's ``pg_advisory_lock`` (MySQL's ``GET_LOCK``) for the block: workers on
    several machines that start together otherwise race for the same worker number (Optuna has
    no atomic counter). A server that cannot be reached here is left to ``open_storage``, which
    says so in one line."""
    import sqlalchemy

    engine = None
    try:
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        dialect = engine.dialect.name
        conn = engine.connect() if dialect in ("postgresql", "mysql") else None
    except Exception:  # unreachable server, missing driver: no lock, and open_storage reports it
        conn = None
    if conn is None:
        if engine is not None:
            engine.dispose()
        yield
        return
    lock, unlock = (("SELECT pg_advisory_lock(:k)", "SELECT pg_advisory_unlock(:k)") if dialect == "postgresql"
                    else ("SELECT GET_LOCK(:k, -1)", "SELECT RELEASE_LOCK(:k)"))
    key = _SERVER_LOCK_KEY if dialect == "postgresql" else "unitune"
    try:
        conn.execute(sqlalchemy.text(lock), {"k": key})
        yield
    finally:
        try:
            conn.execute(sqlalchemy.text(unlock), {"k": key})
        finally:
            conn.close()  # closing the session releases the lock in any case
            engine.dispose()


def close_storage(storage: BaseStorage) -> None:
    """Close a storage's database connections now rather than at garbage collection (SQLite then
    removes its ``-wal`` / ``-shm`` files): used when a run is refused after opening its storage."""
    engine = getattr(storage, "engine", None)
    if engine is not None:
        engine.dispose()


# ---- worker liveness ---------------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks) of ``pid`` from /proc, or None if there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], fields[19]


def worker_token(pid: int | None = None) -> str:
    """``host:pid:start`` naming this process (start is empty where /proc is missing)."""
    pid = os.getpid() if pid is None else pid
    stat = _proc_stat(pid) if Path("/proc/self/stat").exists() else None
    return f"{socket.gethostname()}:{pid}:{stat[1] if stat else ''}"


def worker_is_dead(token: str) -> bool:
    """True only when the worker ``token`` names provably no longer runs (same host only)."""
    try:
        host_pid, start = token.rsplit(":", 1)
        host, pid_text = host_pid.rsplit(":", 1)
        pid = int(pid_text)
    except ValueError:
        return False
    if host != socket.gethostname():
        return False
    if Path("/proc/self/stat").exists():
        stat = _proc_stat(pid)
        if stat is None:
            return True
        state, started = stat
        return state in ("Z", "X") or (bool(start) and started != start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


# ---- writing to a trial held only as a FrozenTrial ----------------------------------------------


def stored_trial(study: optuna.Study, number: int) -> FrozenTrial:
    """Trial ``number`` of ``study`` as stored now, through public calls only (a ``Study`` has no
    lookup by number; the storage has one, but ``Study`` keeps its storage private)."""
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def trial_storage(study: optuna.Study, number: int) -> tuple[BaseStorage, int]:
    """The storage behind ``study`` and the storage id of its trial ``number``.

    For the writes Optuna has no public call for: a sampler hook is handed a ``FrozenTrial``,
    which has no setters (and ``Trial.set_system_attr``, deprecated in Optuna 3.1 as internal,
    https://github.com/optuna/optuna/pull/4188, is removed in 5.0), and
    :func:`recover_dead_trials` fails another worker's trial, which this process holds only as a
    ``FrozenTrial`` (``Study.tell`` would also run the sampler's ``after_trial`` on it and sets no
    fail reason). Optuna's own samplers and pruners write through ``study._storage`` with
    ``trial._trial_id`` for the same reason (e.g. ``optuna/samplers/_base.py``,
    ``pruners/_successive_halving.py``); a public read/write view of a study for samplers was
    proposed and closed undecided (https://github.com/optuna/optuna/pull/4378). ``Study`` keeps
    its storage in the private ``_storage`` attribute with no public accessor, so this is the one
    place unitune reads it; the ids come from public ``BaseStorage`` calls, by study name and
    trial number, rather than from ``Study._study_id`` / ``FrozenTrial._trial_id``.
    """
    storage: BaseStorage = study._storage  # no public accessor: see above
    study_id = _study_ids.get(study)
    if study_id is None:  # one query per Study object (a few ms on SQLite), as Optuna's Study does itself
        study_id = _study_ids[study] = storage.get_study_id_from_name(study.study_name)
    return storage, storage.get_trial_id_from_study_id_trial_number(study_id, number)


_study_ids: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # Study -> its storage id


# ---- failing and re-enqueueing trials ------------------------------------------------------------


def requeue_trial(
    study: optuna.Study,
    trial: FrozenTrial,
    distributions: Mapping[str, BaseDistribution],
    max_retries: int = 3,
    count: bool = True,
) -> bool:
    """Enqueue a failed trial's parameters again (Optuna's retry convention); True if enqueued.

    The parameters are the trial's own if it got all of them, else its enqueued ``fixed_params``
    (a seed or retry that died before it started); a trial with neither was never evaluated and
    is not retried. The new trial records ``failed_trial`` / ``retry_history`` system attributes
    (as :class:`optuna.storages.RetryHeartbeatStaleTrialCallback` does) and a ``retry_of`` user
    attribute. With ``count=False`` (a trial handed back unevaluated) the retry bookkeeping is
    carried over unchanged.
    """
    names = list(distributions)
    params: dict[str, Any] | None = None
    if names and all(n in trial.params for n in names):
        params = {n: trial.params[n] for n in names}
    else:
        fixed = trial.system_attrs.get("fixed_params") or {}
        if names and all(n in fixed for n in names):
            params = {n: fixed[n] for n in names}
    if params is None:
        return False
    history = list(trial.system_attrs.get("retry_history", []))
    user_attrs = {k: v for k, v in trial.user_attrs.items() if k in ("source", RETRY_OF_ATTR)}
    if count:
        history.append(trial.number)
        if len(history) > max_retries:
            _logger.warning("trial %d failed %d times; not retrying it again", history[0], len(history))
            return False
        user_attrs[RETRY_OF_ATTR] = trial.number
    system_attrs = {"failed_trial": history[0], "retry_history": history} if history else {}
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=params,
            distributions={n: distributions[n] for n in names},
            user_attrs=user_attrs,
            system_attrs=system_attrs,
        )
    )
    return True


class _HeartbeatRequeue:
    """Optuna's heartbeat callback: re-enqueue a stale trial's parameters."""

    def __init__(self, distributions: dict[str, BaseDistribution]):
        self.distributions = distributions

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self.distributions:
            requeue_trial(study, trial, self.distributions)


def recover_dead_trials(
    study: optuna.Study,
    distributions: Mapping[str, BaseDistribution],
    *,
    stale_after: float = 300.0,
    max_retries: int = 3,
    idle_token: str | None = None,
) -> list[int]:
    """Fail the RUNNING trials whose worker provably died and re-enqueue them; their numbers.

    ``idle_token``: the calling worker, when it runs no trial right now (between two trials). A
    trial without a worker token (its worker died between taking it from the storage and
    recording itself) is then provably orphaned when every worker the study registered is dead
    or is the caller. Run it under :func:`storage_lock` for file storages.
    """
    failed = []
    now = datetime.datetime.now()
    orphans_provable: bool | None = None  # computed once, for the first token-less trial
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        token = trial.user_attrs.get(WORKER_ATTR)
        if token:
            if not worker_is_dead(str(token)):
                continue
            reason = f"worker {token} died while running this trial"
        else:
            if orphans_provable is None:
                registered = [v.get("worker") for k, v in study.user_attrs.items()
                              if k.startswith("worker.") and isinstance(v, dict)]
                orphans_provable = idle_token is not None and all(
                    tok == idle_token or (tok and worker_is_dead(str(tok))) for tok in registered)
            started = trial.datetime_start
            if orphans_provable:
                reason = "its worker died before recording itself (no worker of the study runs)"
            elif trial.params or started is None or (now - started).total_seconds() < stale_after:
                continue
            else:
                reason = f"no worker started this trial within {stale_after:.0f} s"
        storage, trial_id = trial_storage(study, trial.number)
        try:
            storage.set_trial_user_attr(trial_id, FAIL_REASON_ATTR, reason)
            if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:  # another worker got there first
            continue
        failed.append(trial.number)
        retried = requeue_trial(study, storage.get_trial(trial_id), distributions, max_retries)
        _logger.warning("trial %d failed: %s%s", trial.number, reason, "; re-enqueued" if retried else "")
    return failed
