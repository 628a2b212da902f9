"""Storage behind a URL: a database (any SQLAlchemy URL Optuna's RDB storage takes), Optuna's
gRPC storage proxy (`grpc://host:port`) or a journal file (`journal:///path/study.log`);
passwords masked wherever a URL is printed.

Many worker processes share one storage, so it also provides what they need to cooperate:
a bounded connection pool (at most 2 connections per worker, `WORKER_POOL`), retries through
database faults (`vae_tune.tuning.faults`), heartbeats (a dead worker's trial is failed after
the grace period and queued again), and SQLite in WAL mode (readers such as the dashboard never
block the writers). The per-study mutex is `vae_tune.tuning.locks.StudyLock`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
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
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from sqlalchemy.engine import URL, make_url

from vae_tune.errors import UserError
from vae_tune.tuning.faults import RetryingStorage, outage_limit

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


GRPC, JOURNAL = "grpc", "journal"


def storage_kind(url: str) -> str:
    """What a storage URL names: "grpc" (Optuna's storage proxy), "journal" (a journal file)
    or the SQLAlchemy backend of a database ("sqlite", "postgresql", "mysql", ...)."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in (GRPC, JOURNAL):
        return scheme
    return _parse(url).get_backend_name()


def journal_file(url: str) -> Path | None:
    """The file of a `journal://` URL: `journal:///abs/study.log` (absolute) or
    `journal://study.log` (relative to the working folder); None for other URLs."""
    if storage_kind(url) != JOURNAL:
        return None
    rest = url.split("://", 1)[1]
    if not rest or rest.endswith("/"):
        raise UserError(f"a journal URL names a file: {url}", "storage")
    return Path(rest)


def grpc_address(url: str) -> tuple[str, int]:
    """Host and port of a `grpc://host:port` URL (port 13000 if omitted, as Optuna's)."""
    parsed = _parse(url)
    if not parsed.host:
        raise UserError(f"a gRPC storage URL is grpc://HOST:PORT, got {url}", "storage")
    return parsed.host, parsed.port or 13000


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL; None for in-memory SQLite and for servers.

    Handles `sqlite:///file:x.db?uri=true` URI filenames as SQLite itself reads them."""
    if storage_kind(url) in (GRPC, JOURNAL):
        return None
    parsed = _parse(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    if parsed.database.startswith("file:"):
        name = parsed.database.removeprefix("file:").split("?")[0]
        return None if name in ("", ":memory:") else Path(name)
    return Path(parsed.database)


# A worker's connection budget: one connection kept open, a second opened only while two
# are needed at once (the study lock is held while Optuna writes, or a heartbeat meets a
# report) and closed when returned. SQLAlchemy's pool enforces the cap of 2: a third request
# waits for one of them. The storage proxy serves many workers, so it keeps more.
WORKER_POOL = (1, 1)
APPLICATION_NAME = "vae-tune"
PROXY_POOL = (4, 4)


def engine_kwargs(url: str, pool: tuple[int, int] = WORKER_POOL) -> dict:
    """SQLAlchemy engine settings: a bounded pool that tests a connection before use (a
    restarted server costs a reconnect, not an error); SQLite waits for a writer."""
    size, overflow = pool
    kwargs: dict[str, Any] = {
        "pool_size": size,
        "max_overflow": overflow,
        "pool_timeout": 60,
        "pool_pre_ping": True,
    }
    backend = _parse(url).get_backend_name()
    if backend == "sqlite":
        if sqlite_file(url) is None:  # in-memory: one connection, no pool to bound
            return {}
        kwargs["connect_args"] = {"timeout": 60}  # wait for a writer, not "database is locked"
    elif backend == "postgresql" and "application_name" not in _parse(url).query:
        # pg_stat_activity then says whose connections these are
        kwargs["connect_args"] = {"application_name": f"{APPLICATION_NAME} pid {os.getpid()}"}
    return kwargs


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


def use_heartbeat(storage: RetryingStorage, beat: Heartbeat) -> None:
    """Switch an opened RDB storage to these heartbeat settings (public attributes of Optuna's
    RDBStorage, as its constructor sets them); other storages read them from the study."""
    raw = storage.raw
    if isinstance(raw, optuna.storages.RDBStorage):
        raw.heartbeat_interval = beat.interval
        raw.grace_period = beat.grace
        raw.heartbeat_stale_trial_callback = retry_callback(beat.max_retry)
        raw.failed_trial_callback = raw.heartbeat_stale_trial_callback


def open_storage(
    url: str,
    heartbeat: Heartbeat | None = None,
    *,
    must_exist: bool = False,
    pool: tuple[int, int] = WORKER_POOL,
) -> RetryingStorage:
    """Open the storage at `url`, creating a database's tables if needed; close it with
    `.close()`. Every call on it is retried through database faults (`vae_tune.tuning.faults`).

    `url` is a SQLAlchemy database URL, `grpc://host:port` (Optuna's storage proxy, started
    with `vae-tune storage-proxy`) or `journal:///path/study.log` (Optuna's journal file with
    its file lock: a shared file system and no database). With `heartbeat`, an RDB storage
    records Optuna's heartbeats (the others get vae-tune's, see `vae_tune.runner.recovery`).
    Reading commands pass `must_exist`: they never create a database or a journal.
    """
    kind = storage_kind(url)
    if kind == GRPC:
        return _open_grpc(url)
    if kind == JOURNAL:
        return _open_journal(url, must_exist)
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
    with connection_errors(url):
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna; we rely on them
            warnings.simplefilter("ignore", ExperimentalWarning)
            rdb = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs(url, pool), **beat)
        if path is not None and not must_exist:
            _use_wal(rdb.engine)
    cached = optuna.storages.get_storage(rdb)  # Optuna's in-process cache of finished trials
    return RetryingStorage(
        cached, mask_url(url), raw=rdb, close=rdb.engine.dispose, kind=kind, path=path
    )


def require_grpc(what: str) -> None:
    """A UserError naming the extra unless Optuna's gRPC proxy can be imported."""
    try:
        import google.protobuf  # noqa: F401 - Optuna's proxy speaks protobuf over grpcio
        import grpc  # noqa: F401
    except ModuleNotFoundError as err:
        raise UserError(
            f"{what} needs {err.name}: pip install 'vae-tune[grpc]'", "storage"
        ) from None


PROXY_READY_S = 15.0


def _open_grpc(url: str) -> RetryingStorage:
    host, port = grpc_address(url)
    require_grpc(url)
    with warnings.catch_warnings():  # "experimental" since Optuna 4.2; we rely on it
        warnings.simplefilter("ignore", ExperimentalWarning)
        proxy = optuna.storages.GrpcStorageProxy(host=host, port=port)
    try:  # a proxy still starting gets 15 s, or the outage limit where that is shorter
        proxy.wait_server_ready(timeout=min(PROXY_READY_S, outage_limit()))
    except Exception:  # noqa: BLE001 - grpc's FutureTimeoutError and friends
        proxy.close()
        raise ConnectionError(
            f"cannot open storage {url}: no storage proxy answers there (start one with "
            "`vae-tune storage-proxy --storage DB_URL --port PORT`)"
        ) from None
    # no close: like a disposed engine, which reconnects when used again, the channel must
    # keep serving the studies handed out on it (a Result's study); it holds no database
    # connection, and closes with the process
    return RetryingStorage(proxy, url, kind=GRPC)


def _open_journal(url: str, must_exist: bool) -> RetryingStorage:
    path = journal_file(url)
    assert path is not None
    if must_exist and not path.is_file():
        raise UserError(f"no such journal file: {path}", "storage")
    if not path.parent.is_dir():
        raise UserError(f"no such folder for the journal file: {path.parent}", "storage")
    # the open lock (O_EXCL create) is the one that works on NFS and every POSIX file system
    backend = JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path)))
    journal = optuna.storages.JournalStorage(backend)
    return RetryingStorage(journal, url, kind=JOURNAL, path=path)


@contextlib.contextmanager
def connection_errors(url: str) -> Iterator[None]:
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


def db_now(storage: optuna.storages.BaseStorage) -> float:
    """Now, in seconds since the epoch, on the database's clock (so deadlines agree across
    hosts whose clocks differ); this host's clock for storages without an engine (the proxy,
    the journal: keep the hosts' clocks in sync, NTP)."""
    engine = getattr(storage, "engine", None)
    if engine is None:
        return time.time()
    outage = getattr(storage, "outage", None)
    return outage.call(_db_clock, engine) if outage is not None else _db_clock(engine)


def _db_clock(engine: sqlalchemy.engine.Engine) -> float:
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
