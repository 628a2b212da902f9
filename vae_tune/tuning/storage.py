"""Storage behind a URL: any SQLAlchemy URL Optuna's RDB storage takes; passwords masked.

Many worker processes share one storage, so it also provides what they need to cooperate:
heartbeats (a dead worker's trial is failed after the grace period and queued again), SQLite in
WAL mode (readers such as the dashboard never block the writers), and `StudyLock`, one mutex
per study across processes and machines, held for the few milliseconds a worker needs to count
the study's trials and claim the next one (so the budget is exact, see `vae_tune.tuning.study`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import re
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
from sqlalchemy.engine import URL, make_url

from vae_tune.errors import UserError

# query keys that carry credentials (password=, sslpassword=, passfile=, auth_token=, ...)
_SECRET_KEY = re.compile(r"pass|pwd|secret|token|credential|api_?key", re.IGNORECASE)
MASK = "***"


def _parse(url: str) -> URL:
    """The URL parsed; a malformed one (bad port, not a URL) is a UserError, password masked."""
    try:
        return make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError) as err:
        reason = redact(str(err), url)
        raise UserError(f"not a database URL: {mask_url(url)} ({reason})", "storage") from None


def _secrets(url: str) -> list[str]:
    """Every credential the URL carries: the userinfo password and secret query values."""
    try:
        parsed = make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        return []
    found = [parsed.password] if parsed.password else []
    for key, value in parsed.query.items():
        if _SECRET_KEY.search(key):
            found += [value] if isinstance(value, str) else list(value)
    return [str(v) for v in found if v]


def mask_url(url: str) -> str:
    """The URL as safe to print or store: the password and every secret query value -> ***."""
    try:
        parsed = make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        return "<unparseable storage URL>"
    query = {k: (MASK if _SECRET_KEY.search(k) else v) for k, v in parsed.query.items()}
    text = parsed.set(query=query).render_as_string(hide_password=True)
    return text.replace("%2A%2A%2A", MASK)  # rendering percent-encodes the masked query values


def redact(text: str, url: str) -> str:
    """`text` (an error message, say) with every credential of `url` replaced by ***."""
    for secret in _secrets(url):
        text = text.replace(secret, MASK)
    return text


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL; None for in-memory SQLite and for servers.

    Handles `sqlite:///file:x.db?uri=true` URI filenames as SQLite itself reads them."""
    parsed = _parse(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    if parsed.database.startswith("file:"):
        name = parsed.database.removeprefix("file:").split("?")[0]
        return None if name in ("", ":memory:") else Path(name)
    return Path(parsed.database)


def engine_kwargs(url: str) -> dict:
    if _parse(url).get_backend_name() == "sqlite":
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
    def overrides(
        cls, interval: int | None, grace: int | None, max_retry: int | None
    ) -> dict[str, int]:
        """Settings given on the command line (None: keep the study's), checked now, before
        anything is written."""
        given = {"interval": interval, "grace": grace, "max_retry": max_retry}
        chosen = {k: v for k, v in given.items() if v is not None}
        defaults = cls().to_dict()
        if chosen.get("interval", defaults["interval"]) >= defaults["grace"]:
            # a long interval alone: scale the grace with it (Optuna's default is 2 intervals)
            chosen.setdefault("grace", 3 * chosen["interval"])
        cls.from_dict({**defaults, **chosen})
        return chosen

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


def use_heartbeat(storage: optuna.storages.RDBStorage, beat: Heartbeat) -> None:
    """Switch an opened storage to these heartbeat settings (public attributes of Optuna's
    RDBStorage, as its constructor sets them)."""
    storage.heartbeat_interval = beat.interval
    storage.grace_period = beat.grace
    storage.heartbeat_stale_trial_callback = retry_callback(beat.max_retry)
    storage.failed_trial_callback = storage.heartbeat_stale_trial_callback


def open_storage(
    url: str, heartbeat: Heartbeat | None = None, *, must_exist: bool = False
) -> optuna.storages.RDBStorage:
    """Open the study database at `url`, creating its tables if needed.

    With `heartbeat`, trials run through this storage record heartbeats and stale ones are
    retried. Reading commands (studies, export, report, dashboard) pass `must_exist`: they
    never create a database, so a mistyped SQLite path is an error, not a new empty file.
    """
    path = sqlite_file(url)
    if must_exist and path is not None and not path.is_file():
        raise UserError(f"no such database file: {path}", "storage")
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
        if path is not None and not must_exist:
            _use_wal(storage.engine)
    return storage


@contextlib.contextmanager
def _connection_errors(url: str) -> Iterator[None]:
    """A missing driver or a file that is no database -> UserError; an unreachable database ->
    ConnectionError; all with every credential masked (the CLI prints them without a traceback).
    """
    try:
        yield
    except (sqlalchemy.exc.NoSuchModuleError, ModuleNotFoundError) as err:
        hint = " (for PostgreSQL: pip install 'vae-tune[postgres]')" if "postgres" in url else ""
        reason = redact(str(err), url)
        raise UserError(f"no driver for {mask_url(url)}: {reason}{hint}", "storage") from None
    except sqlalchemy.exc.DBAPIError as err:
        reason = redact(db_reason(err), url)
        if sqlite_file(url) is not None and "not a database" in reason:
            raise UserError(f"{sqlite_file(url)} is not a SQLite database", "storage") from None
        raise ConnectionError(f"cannot open storage {mask_url(url)}: {reason}") from None


def db_reason(err: sqlalchemy.exc.SQLAlchemyError) -> str:
    """The database's own one-line reason for an error, without SQLAlchemy's SQL and links."""
    orig = getattr(err, "orig", None)
    text = str(orig) if orig is not None else str(err)
    return (text.strip().splitlines() or [type(err).__name__])[0]


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
        self._url = url
        self._name = study_name
        digest = hashlib.sha1(f"vae-tune:{study_name}".encode()).digest()
        self._key = int.from_bytes(digest[:8], "big", signed=True)
        self._mysql_name = f"vae-tune:{digest.hex()[:40]}"
        self._backend = _parse(url).get_backend_name()
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


def db_now(storage: optuna.storages.BaseStorage) -> float:
    """Now, in seconds since the epoch, on the database's clock (so deadlines agree across
    hosts whose clocks differ); this host's clock for storages without an engine."""
    engine = getattr(storage, "engine", None)
    if engine is None:
        return time.time()
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":  # UTC text with second resolution; add the fraction
            text = conn.exec_driver_sql("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')").scalar()
            now = dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc)
        else:
            now = conn.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar()
            if now.tzinfo is None:  # MySQL: the session's time zone, UTC by default
                now = now.replace(tzinfo=dt.timezone.utc)
    return now.timestamp()


def unreachable(url: str, timeout_s: int = 3) -> str | None:
    """Why the database at `url` does not answer (None: it does), credentials masked; for
    tests and benchmarks that need a server, and for messages that say which one is down."""
    kwargs = {"connect_args": {"connect_timeout": timeout_s}} if "postgres" in url else {}
    try:
        engine = sqlalchemy.create_engine(url, **kwargs)
        with engine.connect():
            pass
        engine.dispose()
    except Exception as err:  # noqa: BLE001 - any failure means "does not answer"
        return f"no database answers at {mask_url(url)} ({type(err).__name__})"
    return None
