"""`StudyLock`: one mutex per study, shared by every process on every machine that uses the
storage, held for the few milliseconds a worker needs to count the study's trials and claim
the next one (so budgets are exact, see `vae_tune.runner.budget`).

How each storage holds it:
* PostgreSQL: a session advisory lock, waited for in the server; MySQL/MariaDB: GET_LOCK.
  Both vanish with their connection, so a worker killed while holding one never blocks the
  others. The connection is the worker's own pooled one (`vae_tune.tuning.storage.WORKER_POOL`):
  the lock costs no connection of its own beyond the pool's cap of 2.
* SQLite and the journal: an exclusive `flock` on a file beside the database or the journal
  (on a cluster's shared file system, NFS v4 carries it to every node).
* The gRPC proxy: workers hold no lock; the proxy checks each claim against the budget itself
  (`vae_tune.runner.proxy`), one claim at a time.

Waiting polls, so a Ctrl-C (`should_stop`) is honoured while another process holds the lock;
a database fault while waiting is waited out like any other (`vae_tune.tuning.faults`).
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy
import sqlalchemy.exc

from vae_tune.tuning.faults import (
    FIRST_WAIT_S,
    LONGEST_WAIT_S,
    Outage,
    RetryingStorage,
    transient,
)
from vae_tune.tuning.storage import (
    GRPC,
    connection_errors,
    journal_file,
    mask_url,
    sqlite_file,
    storage_kind,
)

try:
    import fcntl
except ImportError:  # not POSIX (Windows): one process at a time is all we can promise
    fcntl = None  # type: ignore[assignment]


class StudyLock:
    """The study's mutex (see the module); a context manager, or `acquire` / `release`."""

    POLL_S = 0.02  # polling a lock file (and MySQL's GET_LOCK)
    WAIT_MS = 250  # one wait in PostgreSQL for the advisory lock, between looks at Ctrl-C

    def __init__(self, storage: RetryingStorage | str, study_name: str):
        """On an opened storage (a worker: the lock uses its pool), or on a URL (before the
        storage is opened, e.g. to serialize creating a database's tables)."""
        if isinstance(storage, str):
            self._backend = storage_kind(storage)
            self._path = sqlite_file(storage) or journal_file(storage)
            self._engine_url: str | None = storage
            self._engine = None
            self._outage = Outage(mask_url(storage))
        else:
            self._backend, self._path = storage.kind, storage.path
            self._engine_url, self._engine = None, storage.engine
            self._outage = storage.outage
        digest = hashlib.sha1(f"vae-tune:{study_name}".encode()).digest()
        self._key = int.from_bytes(digest[:8], "big", signed=True)
        self._mysql_name = f"vae-tune:{digest.hex()[:40]}"
        self._conn: sqlalchemy.engine.Connection | None = None
        self._file: Any = None
        self._local = threading.Lock()
        self._held = False

    @property
    def _database(self) -> bool:
        return self._backend in ("postgresql", "mysql", "mariadb")

    def _try(self) -> bool:
        if self._backend == GRPC:
            return True  # the proxy guards claims (vae_tune.runner.proxy)
        if self._database:
            if self._conn is None:
                if self._engine_url is not None:  # a lock of its own: fail fast if unreachable
                    with connection_errors(self._engine_url):
                        if self._engine is None:
                            self._engine = sqlalchemy.create_engine(
                                self._engine_url, poolclass=sqlalchemy.pool.NullPool
                            )
                        conn = self._engine.connect()
                else:
                    conn = self._engine.connect()  # type: ignore[union-attr]
                self._conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            if self._backend == "postgresql":
                return self._wait_postgres()
            sql, args = "SELECT GET_LOCK(:k, 0)", {"k": self._mysql_name}
            return bool(self._conn.execute(sqlalchemy.text(sql), args).scalar())
        path = self._path
        if path is None or fcntl is None:  # in-memory SQLite: this process only
            return self._local.acquire(blocking=False)
        if self._file is None:
            self._file = open(path.with_name(f"{path.name}-vae-tune.lock"), "a+b")  # noqa: SIM115
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _wait_postgres(self) -> bool:
        """Wait in the server for the advisory lock, at most WAIT_MS: the lock passes to the
        next waiter the moment it is released, and 64 waiting workers cost the server a few
        statements a second, not a poll every 20 ms each."""
        assert self._conn is not None
        self._conn.exec_driver_sql(f"SET lock_timeout = '{self.WAIT_MS}ms'")
        try:
            self._conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self._key})
        except sqlalchemy.exc.OperationalError as err:
            if getattr(err.orig, "sqlstate", None) != "55P03":  # lock_not_available
                raise
            return False
        finally:
            self._conn.exec_driver_sql("RESET lock_timeout")  # the pool's next user sees none
        return True

    def acquire(self, should_stop: Callable[[], bool] | None = None) -> bool:
        """Wait for the lock; False (not held) if `should_stop()` turns true while waiting."""
        wait = FIRST_WAIT_S
        while True:
            try:
                if self._try():
                    break
                pause = 0.0 if self._backend == "postgresql" else self.POLL_S  # waited there
            except Exception as err:
                if not transient(err):
                    raise
                self._drop_connection(invalidate=True)
                self._outage._failed(err)  # raises StorageDown past the limit
                pause, wait = wait, min(LONGEST_WAIT_S, wait * 2)
            if should_stop is not None and should_stop():
                self._drop_connection()
                return False
            time.sleep(pause)
        self._outage._answered()
        self._held = True
        return True

    def release(self) -> None:
        """Release the lock if held (safe to call twice); a database lock's connection goes
        back to the worker's pool."""
        if not self._held:
            return
        self._held = False
        if self._backend == GRPC:
            return
        if self._conn is not None:
            sql = (
                "SELECT pg_advisory_unlock(:k)"
                if self._backend == "postgresql"
                else "SELECT RELEASE_LOCK(:k)"
            )
            key = self._key if self._backend == "postgresql" else self._mysql_name
            try:
                self._conn.execute(sqlalchemy.text(sql), {"k": key})
                self._drop_connection()
            except sqlalchemy.exc.DBAPIError:  # connection gone: so is the lock
                self._drop_connection(invalidate=True)
        elif self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
        else:
            self._local.release()

    def __enter__(self) -> StudyLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _drop_connection(self, invalidate: bool = False) -> None:
        """Return the lock's connection to the pool; a broken one is discarded instead."""
        if self._conn is not None:
            with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError):
                if invalidate:
                    self._conn.invalidate()
                self._conn.close()
            self._conn = None

    def close(self) -> None:
        self.release()
        self._drop_connection()
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._engine_url is not None and self._engine is not None:
            self._engine.dispose()
            self._engine = None
