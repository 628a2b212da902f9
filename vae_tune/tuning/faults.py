"""Database faults survived: every storage call retried with bounded exponential backoff.

A server restart, a reset connection, "too many clients", SQLite's "database is locked", a
storage proxy that restarts: each is a fault of the moment, not of the trial. `RetryingStorage`
wraps whatever storage a URL opens (Optuna's RDB storage with its cache, the gRPC proxy client,
the journal) and retries a call that meets one, waiting 0.25 s, 0.5 s, 1 s ... up to 8 s
between tries, for at most `outage_s` seconds (default 600; `VAE_TUNE_DB_OUTAGE_S`). A running
trial's report simply waits, so training in progress is never lost to a hiccup. One log line
says when the storage stopped answering and one when it came back; past the limit the call
raises `StorageDown` and the worker stops with exit code 75 (EX_TEMPFAIL), its trial queued to
resume, so a later `run` or `worker` carries on.

What is not retried: errors that are answers (a missing study, a finished trial, a constraint),
which Optuna raises as KeyError, UpdateFinishedTrialError and the like.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import optuna
import sqlalchemy.exc
from optuna.exceptions import StorageInternalError
from optuna.storages import BaseStorage

from vae_tune.errors import ServiceError

T = TypeVar("T")
_log = logging.getLogger("vae_tune")

DEFAULT_OUTAGE_S = 600.0
FIRST_WAIT_S, LONGEST_WAIT_S = 0.25, 8.0
EXIT_STORAGE_DOWN = 75  # sysexits.h EX_TEMPFAIL: try again later

# what a database says when it is away for a moment (lower case; PostgreSQL, MySQL, SQLite)
_TRANSIENT = (
    "database is locked",
    "database table is locked",
    "too many clients",
    "too many connections",
    "connection refused",
    "connection reset",
    "could not connect",
    "connection failed",
    "connection is closed",
    "server closed the connection",
    "terminating connection",
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "lost connection",
    "gone away",
    "broken pipe",
    "ssl syscall",
    "consuming input failed",
    "timeout",
    "timed out",
)


class StorageDown(ServiceError):
    """The storage did not answer for longer than the outage limit (exit code 75)."""

    exit_code = EXIT_STORAGE_DOWN


def outage_limit() -> float:
    """Seconds a storage may stay away before workers stop (`VAE_TUNE_DB_OUTAGE_S`)."""
    raw = os.environ.get("VAE_TUNE_DB_OUTAGE_S")
    try:
        return float(raw) if raw else DEFAULT_OUTAGE_S
    except ValueError:
        return DEFAULT_OUTAGE_S


def transient(err: BaseException) -> bool:
    """Whether `err` is a storage fault of the moment, worth waiting out."""
    if isinstance(err, StorageInternalError) and err.__cause__ is not None:
        return transient(err.__cause__)
    if isinstance(err, sqlalchemy.exc.TimeoutError):  # the pool waited for a connection
        return True
    if isinstance(err, sqlalchemy.exc.DBAPIError):
        if err.connection_invalidated:
            return True
        if isinstance(err, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError):
            text = str(err.orig if err.orig is not None else err).lower()
            return any(marker in text for marker in _TRANSIENT)
        return False
    if isinstance(err, sqlalchemy.exc.DisconnectionError):
        return True
    code = getattr(err, "code", None)
    if callable(code) and type(err).__module__.startswith("grpc"):
        name = getattr(code(), "name", "")
        return name in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED")
    return False


def reason_of(err: BaseException) -> str:
    """The fault's one-line reason (the database's own words where it gave some)."""
    if isinstance(err, StorageInternalError) and err.__cause__ is not None:
        err = err.__cause__
    orig = getattr(err, "orig", None)
    details = getattr(err, "details", None)
    if orig is not None:
        text = str(orig)
    elif callable(details):
        text = str(details())
    else:
        text = str(err) or type(err).__name__
    return (text.strip().splitlines() or [type(err).__name__])[0]


class Outage:
    """Backoff and the two log lines for one storage, shared by a process's threads."""

    def __init__(self, where: str, limit_s: float | None = None):
        self.where = where
        self.limit_s = outage_limit() if limit_s is None else limit_s
        self._lock = threading.Lock()
        self._since: float | None = None

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        wait = FIRST_WAIT_S
        while True:
            try:
                result = fn(*args, **kwargs)
            except Exception as err:
                if not transient(err):
                    raise
                self._failed(err)
                time.sleep(wait * (0.5 + random.random()))  # jitter: workers do not stampede
                wait = min(LONGEST_WAIT_S, wait * 2)
                continue
            self._answered()
            return result

    def _failed(self, err: BaseException) -> None:
        now = time.monotonic()
        with self._lock:
            first = self._since is None
            if first:
                self._since = now
            down_s = now - self._since
        if first:
            _log.warning(
                "storage %s does not answer (%s); retrying for up to %.0f s",
                self.where,
                reason_of(err),
                self.limit_s,
            )
        if down_s > self.limit_s:
            raise StorageDown(
                f"storage {self.where} has not answered for {down_s:.0f} s ({reason_of(err)}): "
                "stopping; run again to resume once it is back"
            ) from None

    def _answered(self) -> None:
        if self._since is None:  # the common case, without taking the lock
            return
        with self._lock:
            since, self._since = self._since, None
        if since is not None:
            _log.warning(
                "storage %s answers again after %.1f s", self.where, time.monotonic() - since
            )


# Every public method of Optuna's storage interface.
_METHODS = sorted(
    name for name, value in vars(BaseStorage).items() if callable(value) and name[0] != "_"
)


def _forward(name: str) -> Callable[..., Any]:
    def method(self: RetryingStorage, *args: Any, **kwargs: Any) -> Any:
        return self.outage.call(getattr(self.inner, name), *args, **kwargs)

    method.__name__ = name
    method.__doc__ = f"`{name}` of the wrapped storage, retried through storage faults."
    return method


class RetryingStorage(BaseStorage):
    """Any Optuna storage, every call retried through transient faults (see the module).

    `inner` is what Optuna would use itself (RDB: `optuna.storages.get_storage`, with its
    cache); `raw` is the storage under it (RDBStorage, GrpcStorageProxy, JournalStorage).
    Optuna's heartbeats live on RDB storages only: `heartbeats` says whether `inner` has them.
    """

    def __init__(
        self,
        inner: BaseStorage,
        where: str,
        *,
        raw: BaseStorage | None = None,
        close: Callable[[], None] | None = None,
        kind: str = "",
        path: Path | None = None,
    ):
        self.kind = kind  # "grpc", "journal", or the database backend ("postgresql", ...)
        self.path = path  # the SQLite or journal file, if any
        self.inner = inner
        self.raw = raw if raw is not None else inner
        self.outage = Outage(where)
        self._close = close

    @property
    def heartbeats(self) -> bool:
        """Whether Optuna's own heartbeats (an RDB storage's) record and judge trials here."""
        return isinstance(self.raw, optuna.storages.RDBStorage)

    @property
    def engine(self) -> sqlalchemy.engine.Engine | None:
        """The SQLAlchemy engine of an RDB storage (None for the proxy and the journal)."""
        return getattr(self.raw, "engine", None)

    def close(self) -> None:
        """Close every connection this storage holds (safe to call twice)."""
        if self._close is not None:
            self._close()

    def __getstate__(self) -> dict:
        raise TypeError("a vae-tune storage is opened in each process, not pickled")


for _name in _METHODS:
    setattr(RetryingStorage, _name, _forward(_name))
RetryingStorage.__abstractmethods__ = frozenset()
