"""Storage behind a URL: any SQLAlchemy URL Optuna's RDB storage takes; passwords masked.

Many worker processes share one storage, so it also provides what they need to cooperate:
heartbeats (a dead worker's trial is failed after the grace period and queued again), SQLite in
WAL mode (readers such as the dashboard never block the writers), and `StudyLock`, one mutex
per study across processes and machines, held for the few milliseconds a worker needs to count
the study's trials and claim the next one (so the budget is exact, see `tuner.study`).
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
import sqlalchemy.exc
from optuna.exceptions import ExperimentalWarning
from sqlalchemy.engine import make_url

from tuner.errors import UserError


def mask_url(url: str) -> str:
    """The URL as safe to print: the password (if any) replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return "<unparseable storage URL>"


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL; None for in-memory SQLite and for servers."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    if parsed.database.startswith("file:"):  # sqlite:///file:x.db?uri=true
        return Path(parsed.database.removeprefix("file:").split("?")[0])
    return Path(parsed.database)


def engine_kwargs(url: str) -> dict:
    if make_url(url).get_backend_name() == "sqlite":
        # wait for a writer instead of failing with "database is locked"
        return {"connect_args": {"timeout": 60}}
    return {"pool_pre_ping": True}


@dataclass(frozen=True)
class Heartbeat:
    """How a worker proves its trial is alive, and what happens when it stops doing so.

    Every `interval` seconds a running trial writes a heartbeat; a RUNNING trial without one
    for `grace` seconds is failed by the next process that looks (any worker, any `run`) and
    queued again as a WAITING retry, at most `max_retry` times per original trial.
    """

    interval: int = 10
    grace: int = 30
    max_retry: int = 3

    def __post_init__(self) -> None:
        if self.interval < 1 or self.grace < 1 or self.max_retry < 0:
            raise UserError(
                f"heartbeat interval and grace must be >= 1 s and max-retry >= 0, got "
                f"{self.interval}, {self.grace}, {self.max_retry}",
                "heartbeat",
            )
        if self.grace <= self.interval:
            raise UserError(
                f"the grace period ({self.grace} s) must be longer than the heartbeat interval "
                f"({self.interval} s), or live trials are failed between two heartbeats",
                "heartbeat",
            )

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Heartbeat:
        return cls(
            **{
                k: int(v)
                for k, v in (data or {}).items()
                if k in ("interval", "grace", "max_retry")
            }
        )


def retry_callback(max_retry: int) -> Callable[[optuna.Study, Any], None]:
    """Optuna's retry of a failed trial: a WAITING copy (same params, user attrs, learning curve)
    that records the original in its `failed_trial` / `retry_history` system attrs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback(
            max_retry=max_retry, inherit_intermediate_values=True
        )


def open_storage(url: str, heartbeat: Heartbeat | None = None) -> optuna.storages.RDBStorage:
    """Open (creating tables if needed) the study database at `url`.

    With `heartbeat`, trials run through this storage record heartbeats and stale ones are
    retried; reading commands (studies, export, dashboard) open it without.
    """
    _check_url(url)
    beat: dict[str, Any] = {}
    if heartbeat is not None:
        beat = {
            "heartbeat_interval": heartbeat.interval,
            "grace_period": heartbeat.grace,
            "heartbeat_stale_trial_callback": retry_callback(heartbeat.max_retry),
        }
    with _connection_errors(url):
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna; we rely on them
            warnings.simplefilter("ignore", ExperimentalWarning)
            storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs(url), **beat)
    if sqlite_file(url) is not None:
        _use_wal(storage.engine)
    return storage


def _check_url(url: str) -> None:
    try:
        make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise UserError(f"not a database URL: {mask_url(url)}", "storage") from None


@contextlib.contextmanager
def _connection_errors(url: str) -> Iterator[None]:
    """A missing driver -> UserError; an unreachable database -> ConnectionError; both with
    the password masked (the CLI prints them without a traceback)."""
    try:
        yield
    except (sqlalchemy.exc.NoSuchModuleError, ModuleNotFoundError) as err:
        hint = " (for PostgreSQL: pip install 'vae-tune[postgres]')" if "postgres" in url else ""
        raise UserError(f"no driver for {mask_url(url)}: {err}{hint}", "storage") from None
    except sqlalchemy.exc.OperationalError as err:
        reason = str(err.orig).splitlines()[0] if err.orig else str(err)
        raise ConnectionError(f"cannot open storage {mask_url(url)}: {reason}") from None


def _use_wal(engine: sqlalchemy.engine.Engine) -> None:
    """Switch a SQLite file to write-ahead logging: readers (the dashboard, `studies`) then never
    block writers and vice versa, so local workers and a live dashboard share one file.

    WAL is a property of the file, so once set it holds for every connection of every process;
    it needs shared memory, i.e. a local disk (keep SQLite off NFS, which WAL does not support).
    If another process holds the file right now the switch is simply tried again next time.
    """
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    except sqlalchemy.exc.OperationalError:
        pass


class StudyLock:
    """A mutex for one study shared by every process on every machine that uses the storage.

    PostgreSQL: a session advisory lock; MySQL: GET_LOCK; both vanish with the connection, so a
    worker killed while holding one never blocks the others. SQLite: an exclusive `flock` on a
    file beside the database (SQLite serves one machine anyway). Waiting polls, so a Ctrl-C
    (`should_stop`) is honoured while another process holds the lock.
    """

    POLL_S = 0.02

    def __init__(self, url: str, study_name: str):
        _check_url(url)
        self._url = url
        self._name = study_name
        digest = hashlib.sha1(f"vae-tune:{study_name}".encode()).digest()
        self._key = int.from_bytes(digest[:8], "big", signed=True)
        self._mysql_name = f"vae-tune:{digest.hex()[:40]}"
        self._backend = make_url(url).get_backend_name()
        self._engine: sqlalchemy.engine.Engine | None = None
        self._conn: sqlalchemy.engine.Connection | None = None
        self._file: Any = None
        self._local = threading.Lock()
        self._held = False

    def _try(self) -> bool:
        if self._backend in ("postgresql", "mysql", "mariadb"):
            if self._conn is None:
                with _connection_errors(self._url):
                    self._engine = sqlalchemy.create_engine(
                        self._url, poolclass=sqlalchemy.pool.NullPool
                    )
                    conn = self._engine.connect()
                self._conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            if self._backend == "postgresql":
                sql, args = "SELECT pg_try_advisory_lock(:k)", {"k": self._key}
            else:
                sql, args = "SELECT GET_LOCK(:k, 0)", {"k": self._mysql_name}
            try:
                return bool(self._conn.execute(sqlalchemy.text(sql), args).scalar())
            except sqlalchemy.exc.DBAPIError:  # the server restarted: reconnect next time
                self._drop_connection()
                return False
        path = sqlite_file(self._url)
        try:
            import fcntl
        except ImportError:  # not POSIX (Windows): one process at a time is all we can promise
            path = None
        if path is None:  # in-memory SQLite or no flock: this process only
            return self._local.acquire(blocking=False)
        if self._file is None:
            self._file = open(path.with_name(f"{path.name}-vae-tune.lock"), "a+b")  # noqa: SIM115
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def acquire(self, should_stop: Callable[[], bool] | None = None) -> bool:
        """Wait for the lock; False (not held) if `should_stop()` turns true while waiting."""
        while not self._try():
            if should_stop is not None and should_stop():
                return False
            time.sleep(self.POLL_S)
        self._held = True
        return True

    def release(self) -> None:
        """Release the lock if held (safe to call twice)."""
        if not self._held:
            return
        self._held = False
        if self._conn is not None:
            sql = (
                "SELECT pg_advisory_unlock(:k)"
                if self._backend == "postgresql"
                else "SELECT RELEASE_LOCK(:k)"
            )
            key = self._key if self._backend == "postgresql" else self._mysql_name
            try:
                self._conn.execute(sqlalchemy.text(sql), {"k": key})
            except sqlalchemy.exc.DBAPIError:  # connection gone: so is the lock
                self._drop_connection()
        elif self._file is not None:
            import fcntl

            fcntl.flock(self._file, fcntl.LOCK_UN)
        else:
            self._local.release()

    def __enter__(self) -> StudyLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError):
                self._conn.close()
            self._conn = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def close(self) -> None:
        self.release()
        self._drop_connection()
        if self._file is not None:
            self._file.close()
            self._file = None
