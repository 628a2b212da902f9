"""Scaling out: database faults survived, the connection budget, one worker pool for every study.

Real worker processes on real PostgreSQL, SQLite and the storage proxy. The PostgreSQL restart
test restarts the local server (`pg_ctlcluster ... restart`): it runs where the test can do so
(root, as in CI) and is skipped with the reason elsewhere.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

import optuna
import pytest
import sqlalchemy
import sqlalchemy.exc
from optuna.trial import TrialState
from support import (
    HEARTBEAT,
    HELD_CHANGES,
    Gate,
    PrivatePostgres,
    Proc,
    free_port,
    open_study,
    states,
    wait_for,
    worker_spec,
)

from vae_tune.runner.budget import Tally
from vae_tune.tuning import faults
from vae_tune.tuning.faults import RetryingStorage, StorageDown, transient
from vae_tune.tuning.locks import StudyLock
from vae_tune.tuning.storage import grpc_address, journal_file, open_storage, storage_kind


def _running_with_checkpoint(url: str, name: str, count: int = 1):
    def find():
        try:
            trials = open_study(url, name).get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        except KeyError:
            return None
        saved = [t for t in trials if (t.user_attrs.get("checkpoint") or {}).get("epoch", 0)]
        return saved if len(saved) >= count else None

    return find


def _assert_budget_exact(study: optuna.Study, n: int) -> None:
    """Nothing left RUNNING or WAITING; n trials committed; every failed trial retried once,
    and no original run twice."""
    trials = study.get_trials(deepcopy=False)
    counted = states(study)
    assert counted["RUNNING"] == 0 and counted["WAITING"] == 0, counted
    assert Tally.of(trials).committed == n, counted
    originals = [t.system_attrs["failed_trial"] for t in trials if "failed_trial" in t.system_attrs]
    assert len(originals) == len(set(originals)), originals
    failed = {t.number for t in trials if t.state == TrialState.FAIL}
    assert failed <= set(originals), (failed, originals)


# --- faults: which errors are waited out, and for how long ---------------------------------


def _operational(message: str) -> sqlalchemy.exc.OperationalError:
    return sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception(message))


@pytest.mark.parametrize(
    "message",
    [
        "connection to server at 127.0.0.1 failed: Connection refused",
        "FATAL: sorry, too many clients already",
        "server closed the connection unexpectedly",
        "FATAL: terminating connection due to administrator command",
        "database is locked",
        "the database system is starting up",
    ],
)
def test_database_faults_of_the_moment_are_transient(message):
    assert transient(_operational(message))
    assert transient(optuna.exceptions.StorageInternalError("x").with_traceback(None)) is False
    wrapped = optuna.exceptions.StorageInternalError("commit failed")
    wrapped.__cause__ = _operational(message)
    assert transient(wrapped)


def test_answers_are_not_faults():
    assert not transient(_operational("no such table: studies"))
    assert not transient(sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("duplicate key")))
    assert not transient(KeyError("no study"))
    assert not transient(optuna.exceptions.UpdateFinishedTrialError("finished"))


class _Flaky(optuna.storages.InMemoryStorage):
    """An in-memory storage whose `get_all_studies` fails `failures` times first."""

    def __init__(self, failures: int):
        super().__init__()
        self.failures, self.calls = failures, 0

    def get_all_studies(self):
        self.calls += 1
        if self.calls <= self.failures:
            raise _operational("server closed the connection unexpectedly")
        return super().get_all_studies()


@pytest.fixture
def quick_backoff(monkeypatch):
    monkeypatch.setattr(faults, "FIRST_WAIT_S", 0.001)
    monkeypatch.setattr(faults, "LONGEST_WAIT_S", 0.002)


def test_a_storage_call_waits_out_a_fault_and_logs_it_twice(quick_backoff, caplog):
    inner = _Flaky(failures=3)
    storage = RetryingStorage(inner, "test://flaky")
    with caplog.at_level("WARNING", logger="vae_tune"):
        assert storage.get_all_studies() == []
    assert inner.calls == 4
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines  # one when it stopped answering, one when it came back
    assert "does not answer (server closed the connection" in lines[0]
    assert "answers again" in lines[1]


def test_a_storage_down_past_the_limit_raises_storage_down(quick_backoff, monkeypatch):
    monkeypatch.setenv("VAE_TUNE_DB_OUTAGE_S", "0.05")
    storage = RetryingStorage(_Flaky(failures=10**9), "test://down")
    with pytest.raises(StorageDown, match="has not answered for .* run again to resume"):
        storage.get_all_studies()
    assert StorageDown.exit_code == 75


def test_a_retrying_storage_is_a_whole_optuna_storage(quick_backoff):
    """Every public call of Optuna's storage interface goes through (a study runs on it)."""
    storage = RetryingStorage(_Flaky(failures=1), "test://flaky")
    study = optuna.create_study(storage=storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    assert len(study.trials) == 3 and study.best_value <= 1


def test_storage_urls_name_their_kind(tmp_path: Path):
    assert storage_kind("grpc://proxy:13000") == "grpc"
    assert grpc_address("grpc://proxy:13001") == ("proxy", 13001)
    assert grpc_address("grpc://proxy") == ("proxy", 13000)
    assert journal_file("journal:///shared/a/study.log") == Path("/shared/a/study.log")
    assert journal_file("journal://study.log") == Path("study.log")
    assert storage_kind("postgresql+psycopg://u@h/db") == "postgresql"
    assert storage_kind(f"sqlite:///{tmp_path / 'x.db'}") == "sqlite"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("journal:///no/such/folder/s.log", "no such journal file"),
        ("journal:///", "a journal URL names a file"),
        ("grpc://", "grpc://HOST:PORT"),
    ],
)
def test_bad_storage_urls_exit_2_naming_the_storage(cli, url, message):
    result = cli("studies", "--storage", url)
    assert result.exit_code == 2, result.output
    assert "storage" in result.output and message in result.output


@pytest.mark.integration
def test_no_proxy_at_a_grpc_url_is_said_plainly(cli, monkeypatch):
    monkeypatch.setenv("VAE_TUNE_DB_OUTAGE_S", "1")  # waits for a proxy at most this long
    result = cli("studies", "--storage", f"grpc://127.0.0.1:{free_port()}")
    assert result.exit_code == 1, result.output
    assert "no storage proxy answers there" in result.output


def test_the_journal_lock_excludes_another_process(tmp_path: Path):
    url = f"journal://{tmp_path / 's.log'}"
    storage = open_storage(url)
    mine = StudyLock(storage, "s")
    assert mine.acquire()
    other = subprocess.run(
        [
            "python",
            "-c",
            "import sys; from vae_tune.tuning.locks import StudyLock; "
            "from vae_tune.tuning.storage import open_storage; "
            f"lock = StudyLock(open_storage({url!r}), 's'); "
            "sys.exit(0 if not lock.acquire(lambda: True) else 1)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert other.returncode == 0, other.stderr
    mine.close()


# --- the connection budget ------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.postgres
def test_a_worker_holds_at_most_two_connections(tmp_path: Path, pg_url: str):
    """3 workers on PostgreSQL, pg_stat_activity sampled all the while: no worker process
    ever holds more than 2 connections, and none is left when they exit."""
    url, name = pg_url, f"c-{uuid.uuid4().hex[:8]}"
    spec = worker_spec(tmp_path, url, name, {"dataset": {"subset": 400}})
    engine = sqlalchemy.create_engine(
        url, poolclass=sqlalchemy.pool.NullPool, isolation_level="AUTOCOMMIT"
    )  # autocommit: each read sees the server's activity now, not a transaction's snapshot
    sql = sqlalchemy.text(  # the test's own storages (pytest's pid) are not the workers'
        "SELECT application_name, count(*) FROM pg_stat_activity "
        "WHERE application_name LIKE 'vae-tune pid %' AND application_name <> :me "
        "AND datname = :db GROUP BY application_name"  # this test's database only
    ).bindparams(me=f"vae-tune pid {os.getpid()}", db=sqlalchemy.make_url(url).database)
    peak: Counter = Counter()
    try:
        with engine.connect() as conn:
            run = Proc(tmp_path, "run", spec, "--workers", "3", "--n-trials", "9")
            while run.popen.poll() is None:
                for app, count in conn.execute(sql):
                    peak[app] = max(peak[app], count)
                time.sleep(0.02)  # sampled often, without taking a core from the workers
            code, out = run.wait(), run.output
            left = conn.execute(sql).all()
        assert code == 0, out
        assert len(peak) >= 3, peak  # the 3 workers (and `run` itself) were seen
        assert max(peak.values()) <= 2, peak
        assert left == [], left
        assert states(open_study(url, name)) == {"COMPLETE": 9}
    finally:
        optuna.delete_study(study_name=name, storage=open_storage(url))
        engine.dispose()


# --- database faults: a restart mid-study, a storage that stays down -------------------------


@pytest.mark.integration
@pytest.mark.postgres
def test_a_postgres_restart_mid_study_loses_nothing(tmp_path: Path):
    """3 workers, PostgreSQL restarted while trials train: every trial ends COMPLETE (or
    FAILED and retried), none stays RUNNING, the budget is exact, no trial runs twice. The
    server is the test's own, so the restart touches no other test or suite."""
    server = PrivatePostgres()
    server.start()
    url, name = server.url, "restarted"
    spec = worker_spec(tmp_path, url, name, HELD_CHANGES)
    gate = Gate(tmp_path)  # trials hold after their first checkpoint until the restart
    run = Proc(
        tmp_path, "run", spec, "--workers", "3", "--n-trials", "6", *HEARTBEAT[:2], env=gate.env
    )
    try:
        wait_for(_running_with_checkpoint(url, name, count=2), 180, "2 trials training")
        server.restart()
        gate.open()
        code, out = run.wait(600), run.output
        assert code == 0, out
        study = open_study(url, name)
        _assert_budget_exact(study, 6)
        assert states(study)["COMPLETE"] == 6, out
    finally:
        if run.popen.poll() is None:
            run.popen.kill()
        server.stop()


def _proxy(folder: Path, db: Path, port: int) -> Proc:
    server = Proc(folder, "storage-proxy", "--storage", f"sqlite:///{db}", "--port", str(port))
    wait_for(lambda: server.popen.poll() is not None or "listening" in server.output, 60)
    assert server.popen.poll() is None, server.output
    return server


@pytest.mark.integration
def test_a_storage_down_past_the_limit_stops_the_worker_and_a_later_one_resumes(
    tmp_path: Path, cli
):
    """The storage proxy killed mid-trial and kept down past VAE_TUNE_DB_OUTAGE_S: the worker
    exits 75 saying so; with the proxy back, a new worker finishes the budget exactly (the
    stopped trial failed by its heartbeat and resumed from its checkpoint)."""
    db, port = tmp_path / "p.db", free_port()
    url, name = f"grpc://127.0.0.1:{port}", "down"
    server = _proxy(tmp_path, db, port)
    spec = worker_spec(tmp_path, url, name, HELD_CHANGES)
    gate = Gate(tmp_path)  # the trial holds after its first checkpoint until the proxy is down
    worker = None
    try:
        submitted = cli("submit", str(spec), "--n-trials", "2", *HEARTBEAT)
        assert submitted.exit_code == 0, submitted.output
        env = {"VAE_TUNE_DB_OUTAGE_S": "3", **gate.env}
        worker = Proc(tmp_path, "worker", "--study-name", name, "--storage", url, env=env)
        wait_for(_running_with_checkpoint(url, name), 180, "a trial training")
        server.popen.kill()
        server.wait(10)
        gate.open()
        code, out = worker.wait(120), worker.output
        assert code == 75, out
        assert "does not answer" in out and "has not answered for" in out
        assert "run again to resume" in out
        server = _proxy(tmp_path, db, port)
        again = Proc(tmp_path, "worker", "--study-name", name, "--storage", url)
        code, out = again.wait(300), again.output
        assert code == 0, out
        study = open_study(url, name)
        _assert_budget_exact(study, 2)
        assert states(study) == {"COMPLETE": 2, "FAIL": 1}, out
        retry = next(t for t in study.trials if "failed_trial" in t.system_attrs)
        assert retry.user_attrs.get("resumed_from_epoch", 0) >= 1
    finally:
        for proc in (server, worker):
            if proc is not None and proc.popen.poll() is None:
                proc.popen.kill()


# --- one worker pool for every study --------------------------------------------------------


@pytest.mark.integration
def test_a_pool_serves_studies_submitted_after_it_started(tmp_path: Path, cli):
    """Two `worker --all --serve` processes start on an empty storage; two studies are then
    submitted: the pool runs each to its exact budget, taking trials of both, and SIGTERM
    stops the idle workers cleanly."""
    url = f"sqlite:///{tmp_path / 'pool.db'}"
    pool = [Proc(tmp_path, "worker", "--all", "--serve", "--storage", url) for _ in range(2)]
    try:
        wait_for(lambda: all("serves every open study" in p.output for p in pool), 120)
        for name, n in (("first", 3), ("second", 2)):
            spec = worker_spec(tmp_path, url, name)
            done = cli("submit", str(spec), "--n-trials", str(n))  # the client: in this process
            assert done.exit_code == 0, done.output
            assert f"submitted study {name!r}" in done.output

        def finished():
            try:
                return all(
                    states(open_study(url, name)).get("COMPLETE", 0) == n
                    for name, n in (("first", 3), ("second", 2))
                )
            except KeyError:
                return False

        wait_for(finished, 300, "both studies finished")
        for proc in pool:
            proc.popen.send_signal(signal.SIGTERM)
        codes = [proc.wait(60) for proc in pool]
        out = "\n".join(p.output for p in pool)
        assert all(code in (0, 130, 143) for code in codes), (codes, out)
        assert out.count("joined study 'first'") >= 1 and out.count("joined study 'second'") >= 1
        for name, n in (("first", 3), ("second", 2)):
            _assert_budget_exact(open_study(url, name), n)
        listing = cli("studies", "--storage", url)
        assert listing.exit_code == 0
        assert listing.output.count("finished") == 2, listing.output
    finally:
        for proc in pool:
            if proc.popen.poll() is None:
                proc.popen.kill()
