"""Many workers, one study: real worker processes on real PostgreSQL and SQLite.

PostgreSQL is the server at 127.0.0.1:5432, database `test` (override the URL with
VAE_TUNE_TEST_POSTGRES_URL); its tests are skipped when no server answers, unless
VAE_TUNE_REQUIRE_POSTGRES=1 (as in .ci/run), which makes that a failure. Every test uses a study
name of its own and deletes it afterwards: the database outlives the test run.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import TrialState
from sqlalchemy import make_url
from support import (
    HEARTBEAT,
    HELD_CHANGES,
    HELD_VAE,
    Gate,
    Proc,
    free_port,
    get_json,
    open_study,
    states,
    wait_for,
    worker_spec,
)
from typer.testing import CliRunner

from vae_tune.cli import app
from vae_tune.runner.budget import HOLD, START, Tally, next_step
from vae_tune.runner.launcher import share_devices
from vae_tune.tuning.storage import open_storage

pytestmark = pytest.mark.integration  # processes, servers, browsers or whole tutorials


def _unique_study(url: str):
    """A study name of its own on `url`; the study is deleted afterwards."""
    name = f"w-{uuid.uuid4().hex[:10]}"
    yield url, name
    storage = open_storage(url)
    try:
        optuna.delete_study(study_name=name, storage=storage)
    except KeyError:
        pass
    finally:  # its connections closed now, not when the collector gets to them
        storage.close()


@pytest.fixture(params=[pytest.param("postgres", marks=pytest.mark.postgres), "sqlite"])
def backend(request, tmp_path: Path):
    """(storage URL, unique study name) on each backend."""
    if request.param == "postgres":
        url = request.getfixturevalue("pg_url")
    else:
        url = f"sqlite:///{tmp_path / 's.db'}"
    yield from _unique_study(url)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    """`vae-tune storage-proxy` in front of a SQLite file, for the module's grpc:// tests."""
    folder = tmp_path_factory.mktemp("proxy")
    port = free_port()
    server = Proc(
        folder, "storage-proxy", "--storage", f"sqlite:///{folder / 'p.db'}", "--port", str(port)
    )
    url = f"grpc://127.0.0.1:{port}"
    wait_for(lambda: server.popen.poll() is not None or "listening" in server.output, 60)
    assert server.popen.poll() is None, server.output
    yield url
    server.popen.terminate()
    server.wait(10)


@pytest.fixture(
    params=[
        pytest.param("postgres", marks=pytest.mark.postgres),
        "sqlite",
        "journal",
        "grpc",
    ]
)
def any_storage(request, tmp_path: Path):
    """(storage URL, unique study name) on every kind of storage: PostgreSQL, SQLite, a
    journal file, and the gRPC proxy (in front of SQLite)."""
    url = {
        "postgres": lambda: request.getfixturevalue("pg_url"),
        "sqlite": lambda: f"sqlite:///{tmp_path / 's.db'}",
        "journal": lambda: f"journal://{tmp_path / 's.log'}",
        "grpc": lambda: request.getfixturevalue("proxy"),
    }[request.param]()
    yield from _unique_study(url)


@pytest.fixture
def postgres(pg_url: str):
    yield from _unique_study(pg_url)


def _run(tmp_path: Path, *args: str, timeout: float = 180) -> tuple[int, str]:
    proc = Proc(tmp_path, *args)
    return proc.wait(timeout), proc.output


def _study(url: str, name: str) -> optuna.Study:
    return open_study(url, name)


def _running_with_checkpoint(url: str, name: str, min_epoch: int = 1):
    """A RUNNING trial that has saved at least `min_epoch` epochs (None if none yet)."""

    def find():
        try:
            trials = _study(url, name).get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        except KeyError:
            return None
        for t in trials:
            if (t.user_attrs.get("checkpoint") or {}).get("epoch", 0) >= min_epoch:
                return t
        return None

    return find


def test_threads_are_split_between_workers():
    from vae_tune.runner.launcher import split_threads

    assert split_threads(4, cores=16) == 4
    assert split_threads(3, cores=16) == 5
    assert split_threads(3, cores=2) == 1
    assert split_threads(1, cores=2) == 2


def test_budget_counts_retried_crashes_once():
    """A crashed trial that was retried costs no budget; its retry counts once it runs."""
    study = optuna.create_study()
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}

    def add(state, number_retried=None, **kw):
        system = {} if number_retried is None else {"failed_trial": number_retried}
        if number_retried is not None:
            system["retry_history"] = [number_retried]
        study.add_trial(
            optuna.create_trial(
                state=state,
                params={"x": 0.5},
                distributions=dist,
                value=1.0 if state == TrialState.COMPLETE else None,
                system_attrs=system,
                **kw,
            )
        )

    add(TrialState.COMPLETE)  # 0
    add(TrialState.FAIL)  # 1: crashed, retried by 3
    add(TrialState.FAIL)  # 2: an error, not retried: counts
    add(TrialState.WAITING, number_retried=1)  # 3
    tally = Tally.of(study.get_trials())
    assert (tally.committed, tally.retries_waiting, tally.finished) == (2, 1, 1)


def test_retry_resumes_the_newest_checkpoint_of_its_history(tmp_path: Path, caplog):
    """The checkpoint lookup of a retried trial, step by step, without processes."""
    from optuna.artifacts import FileSystemArtifactStore

    from vae_tune.tuning.checkpoint import TrialCheckpoints, discard, seed_number
    from vae_tune.tuning.storage import retry_callback

    (tmp_path / "art").mkdir()
    store = FileSystemArtifactStore(str(tmp_path / "art"))
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'c.db'}")
    config = {"seed": 0, "lr": 0.01, "device": "cpu"}

    def state(epoch: int) -> dict[str, Any]:
        history = [{"epoch": e, "val": {"elbo": -float(e)}} for e in range(1, epoch + 1)]
        return {"epoch": epoch, "history": history, "weights": torch.full((2,), float(epoch))}

    first = study.ask()
    first.suggest_float("x", 0, 1)
    first.set_user_attr("config", config)
    saver = TrialCheckpoints(first, store)
    assert saver.load() is None  # not a retry: a fresh start
    saver.save(state(1))
    first.report(-1.0, 1)
    saver.save(state(2))  # ... and the worker dies before reporting epoch 2
    assert len(list((tmp_path / "art").iterdir())) == 1  # the older file is gone
    study._storage.set_trial_state_values(first._trial_id, TrialState.FAIL)
    retry_callback(3)(study, study._storage.get_trial(first._trial_id))

    second = study.ask()  # pops the WAITING retry
    assert second.params == first.params and seed_number(second) == first.number
    second.set_user_attr("config", {**config, "device": "cuda:0"})  # may differ: same maths
    loaded = TrialCheckpoints(second, store).load()
    assert loaded["epoch"] == 2 and loaded["weights"].tolist() == [2.0, 2.0]
    frozen = study._storage.get_trial(second._trial_id)
    assert frozen.intermediate_values == {1: -1.0, 2: -2.0}  # inherited + restored
    assert frozen.user_attrs["resumed_from_epoch"] == 2
    assert frozen.user_attrs["resumed_from"] == {"trial": first.number, "epoch": 2}

    # the retry dies too; meanwhile the spec changed: its retry starts afresh, not mixing runs
    study._storage.set_trial_state_values(second._trial_id, TrialState.FAIL)
    retry_callback(3)(study, study._storage.get_trial(second._trial_id))
    third = study.ask()
    assert seed_number(third) == first.number
    third.set_user_attr("config", {**config, "lr": 0.1})
    with caplog.at_level(logging.WARNING, logger="vae_tune"):
        assert TrialCheckpoints(third, store).load() is None
    assert "its config differs in ['lr']" in caplog.text  # it says why it starts afresh
    assert study._storage.get_trial(third._trial_id).user_attrs["resumed_from_epoch"] == 0

    study.tell(third, 1.0)
    discard(study, study._storage.get_trial(third._trial_id), store)
    assert not list((tmp_path / "art").iterdir())  # finished: scratch files removed


def test_bad_worker_options_exit_2_before_writing(cli, write_spec, db_url, tmp_path: Path):
    spec = write_spec()
    memory = cli("run", spec, "--workers", "2", "--storage", "sqlite:///:memory:")
    assert memory.exit_code == 2 and "several workers" in memory.output
    beat = cli("run", spec, "--heartbeat-interval", "5", "--heartbeat-grace", "5")
    assert beat.exit_code == 2 and "grace" in beat.output
    nodev = cli("run", spec, "--devices", "cuda:7")
    assert nodev.exit_code == 2 and "cuda" in nodev.output.lower()
    assert optuna.get_all_study_names(db_url) == []
    missing = cli("worker", "--study-name", "nope", "--storage", db_url)
    assert missing.exit_code == 2 and "no study named 'nope'" in missing.output


def test_workers_finish_exactly_n_trials(any_storage, tmp_path: Path, cli):
    """3 workers on PostgreSQL, 2 on SQLite (with the dashboard reading the live file all the
    while), on a journal file and through the storage proxy: the budget is study-wide and
    exact, and a second run adds exactly its n trials."""
    url, name = any_storage
    workers = 3 if url.startswith("postgresql") else 2
    spec = worker_spec(tmp_path, url, name)
    dashboard, reads = None, 0
    if url.startswith("sqlite"):
        port = free_port()
        api = f"http://127.0.0.1:{port}/api/studies"
        optuna.storages.RDBStorage(url)  # an empty database: the dashboard never creates one
        dashboard = Proc(tmp_path, "dashboard", "--storage", url, "--port", str(port))
        wait_for(lambda: get_json(api) is not None, 60, "the dashboard")
    try:
        run = Proc(tmp_path, "run", spec, "--workers", str(workers), "--n-trials", "7")
        while run.popen.poll() is None:
            if dashboard is not None:
                body = get_json(api)
                reads += bool(body and body["study_summaries"])
            time.sleep(0.2)
        code, out = run.wait(), run.output
        assert code == 0, out
        assert out.count("joined study") == workers
        assert "database is locked" not in out
        study = _study(url, name)
        assert states(study) == {"COMPLETE": 7}, out
        assert study.user_attrs["budget"]["target"] == 7
        if dashboard is not None:  # it read the live study, and still answers
            assert reads > 0 and get_json(api)["study_summaries"][0]["study_name"] == name
        again = cli("run", spec, "--n-trials", "2")  # the same budget rule, one process
        assert again.exit_code == 0, again.output
        assert states(_study(url, name)) == {"COMPLETE": 9}, again.output
    finally:
        if dashboard is not None:
            dashboard.popen.terminate()
            dashboard.wait(10)


def test_next_step_holds_new_trials_until_one_has_completed():
    """With a pruner that judges trials by a completed one, a worker waits while the first
    trial runs; once one has completed (or nothing runs) it starts trials as usual."""
    study = optuna.create_study(direction="maximize")
    study.set_user_attr("budget", {"target": 5})
    first = study.ask()
    assert next_step(study, study._storage)[0] == START  # no such pruner: never held
    assert next_step(study, study._storage, hold_for_reference=True)[0] == HOLD
    study.tell(first, state=TrialState.FAIL)  # nothing runs: the next trial starts alone
    assert next_step(study, study._storage, hold_for_reference=True)[0] == START
    study.tell(study.ask(), 1.0)
    study.ask()
    assert next_step(study, study._storage, hold_for_reference=True)[0] == START


def test_the_first_trial_runs_alone_under_the_curve_pruner(tmp_path: Path):
    """Two workers, the curve pruner: no trial starts before the first one has completed, so
    none can finish unjudged (and mislead the sampler) beside it. The first trial holds until
    the second worker has said it waits: a second trial started beside it would show."""
    url, name = f"sqlite:///{tmp_path / 's.db'}", "held"
    held = {  # FAST trials on the held MLP: the first holds at its second (last) validation
        "architectures": {"held": HELD_VAE},
        "search_space": {"architecture": "held", "held": {"hidden_dim": 16}},
        "pruner": {"name": "curve"},
    }
    spec = worker_spec(tmp_path, url, name, held)
    gate = Gate(tmp_path)
    run = Proc(tmp_path, "run", spec, "--workers", "2", "--n-trials", "4", env=gate.env)
    wait_for(lambda: "waiting for the first trial to finish" in run.output, message="a wait")
    gate.open()
    code, out = run.wait(), run.output
    assert code == 0, out
    trials = sorted(_study(url, name).trials, key=lambda t: t.datetime_start)
    first_done = min(t.datetime_complete for t in trials if t.state == TrialState.COMPLETE)
    assert trials[0].datetime_complete == first_done, out
    assert all(t.datetime_start >= first_done for t in trials[1:]), out


@pytest.mark.postgres
def test_grid_by_three_workers_runs_each_point_once(postgres, tmp_path: Path, cli):
    url, name = postgres
    spec = worker_spec(tmp_path, url, name, {"sampler": {"name": "grid"}})
    code, out = _run(tmp_path, "run", spec, "--workers", "3")
    assert code == 0, out
    trials = _study(url, name).trials
    assert len(trials) == 8 and all(t.state == TrialState.COMPLETE for t in trials), out
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 8
    again = cli("run", spec, "--workers", "3")  # covered: nothing to do, no worker started
    assert again.exit_code == 0 and "nothing to run" in again.output, again.output
    assert len(_study(url, name).trials) == 8


def test_killed_worker_trial_is_retried_and_resumes(any_storage, tmp_path: Path):
    """kill -9 of a worker mid-trial: after the grace period the surviving worker fails that
    trial and runs its retry, which resumes from the last checkpoint; the budget stays exact.
    The same on every storage (Optuna's heartbeats on databases, vae-tune's elsewhere)."""
    url, name = any_storage
    spec = worker_spec(tmp_path, url, name, HELD_CHANGES)
    gate = Gate(tmp_path)  # each trial holds after its first checkpoint until the kill
    run = Proc(tmp_path, "run", spec, "--workers", "2", "--n-trials", "2", *HEARTBEAT, env=gate.env)
    victim = wait_for(_running_with_checkpoint(url, name), message="a checkpoint")
    pid = int(victim.user_attrs["worker"].split(":")[-1])
    # killed while it waits, not while it writes: a journal's file lock held by a killed
    # writer blocks every other writer for Optuna's 30 s grace
    wait_for(gate.held(pid).exists, message="the trial held")
    killed_at = time.time()
    os.kill(pid, signal.SIGKILL)
    gate.open()
    code = run.wait()
    out = run.output
    assert code == 0, out
    assert "was killed by signal 9" in out
    study = _study(url, name)
    trials = {t.number: t for t in study.trials}
    original = trials[victim.number]
    assert original.state == TrialState.FAIL
    # failed by the heartbeat, not at once: no heartbeat for > grace (3 s; beats every 1 s)
    assert original.datetime_complete.timestamp() - killed_at > 1.5
    retries = [t for t in trials.values() if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1, out
    retry = retries[0]
    assert retry.state == TrialState.COMPLETE
    assert (
        retry.params == original.params and retry.user_attrs["seed"] == original.user_attrs["seed"]
    )
    resumed = retry.user_attrs.get("resumed_from_epoch")
    assert resumed is not None, out  # the output says why a checkpoint was not used
    assert 1 <= resumed <= 4  # epochs trained after the kill: 4 - resumed < 4
    assert retry.user_attrs["resumed_from"] == {"trial": victim.number, "epoch": resumed}
    assert sorted(retry.intermediate_values) == [1, 2, 3, 4]  # the whole learning curve
    assert states(study) == {"COMPLETE": 2, "FAIL": 1}
    assert not list((tmp_path / "artifacts").glob("checkpoint-*"))  # scratch files cleaned up


def test_sigint_exits_130_and_the_next_worker_resumes(backend, tmp_path: Path, cli):
    url, name = backend
    spec = worker_spec(tmp_path, url, name, HELD_CHANGES)
    gate = Gate(tmp_path)
    run = Proc(tmp_path, "run", spec, "--workers", "2", "--n-trials", "2", *HEARTBEAT, env=gate.env)
    wait_for(_running_with_checkpoint(url, name), message="a checkpoint")
    gate.open()  # three epochs left to train: the signal lands while they do
    run.popen.send_signal(signal.SIGINT)
    code = run.wait()
    out = run.output
    assert code == 130, out
    assert "Traceback" not in out
    study = _study(url, name)
    counted = states(study)
    assert counted["RUNNING"] == 0 and counted["FAIL"] >= 1, out
    assert counted["WAITING"] == counted["FAIL"]  # every interrupted trial is queued to resume
    _assert_no_orphan_checkpoints(study, tmp_path / "artifacts")
    # the next worker (no spec file: it reads the study) continues the study to its budget
    resumed = cli("worker", "--study-name", name, "--storage", url)
    out = resumed.output
    assert resumed.exit_code == 0, out
    study = _study(url, name)
    finished = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(finished) == 2 and states(study)["RUNNING"] == 0
    assert any(t.user_attrs.get("resumed_from_epoch", 0) >= 1 for t in finished), out


def _assert_no_orphan_checkpoints(study: optuna.Study, store: Path) -> None:
    """Every checkpoint file on disk is the one a trial's `checkpoint` attribute names."""
    named = {
        t.user_attrs["checkpoint"]["artifact_id"]
        for t in study.trials
        if t.user_attrs.get("checkpoint")
    }
    on_disk = {p.name for p in store.glob("checkpoint-*")}
    assert on_disk <= named, on_disk - named


@pytest.mark.parametrize("delay", [0.0, 0.15, 0.3])
def test_sigint_during_checkpoint_writes_leaves_no_orphans(tmp_path: Path, delay: float):
    """The signal only sets a flag: whenever it lands (here at and just after a checkpoint
    write), no checkpoint file is left unrecorded and no trial is left RUNNING."""
    url, name = f"sqlite:///{tmp_path / 's.db'}", "sig"
    spec = worker_spec(tmp_path, url, name, HELD_CHANGES)
    gate = Gate(tmp_path)  # held at epoch 2's validation: its checkpoint is written next
    run = Proc(tmp_path, "run", spec, "--n-trials", "1", *HEARTBEAT, env=gate.env)
    wait_for(_running_with_checkpoint(url, name), message="a checkpoint")
    gate.open()
    time.sleep(delay)
    run.popen.send_signal(signal.SIGINT)
    assert run.wait() == 130, run.output
    study = _study(url, name)
    assert states(study)["RUNNING"] == 0
    _assert_no_orphan_checkpoints(study, tmp_path / "artifacts")


def test_trial_failed_by_another_worker_is_left_to_its_retry(tmp_path: Path):
    """A worker whose heartbeats were late finds its trial failed and retried by another: it
    stops that trial at the next epoch and goes on (here it runs the retry itself)."""
    from vae_tune.tuning.locks import StudyLock
    from vae_tune.tuning.storage import retry_callback

    url, name = f"sqlite:///{tmp_path / 's.db'}", "late"
    spec = worker_spec(tmp_path, url, name, HELD_CHANGES)
    gate = Gate(tmp_path)
    run = Proc(tmp_path, "run", spec, "--n-trials", "1", *HEARTBEAT, env=gate.env)
    victim = wait_for(_running_with_checkpoint(url, name), message="a checkpoint")
    study = _study(url, name)
    with StudyLock(url, name):  # as a worker's recovery does: fail and queue it at once
        study._storage.set_trial_state_values(victim._trial_id, TrialState.FAIL)  # as if stale
        retry_callback(3)(study, study._storage.get_trial(victim._trial_id))
    gate.open()
    code, out = run.wait(), run.output
    assert code == 0, out
    assert "taken over by another worker" in out
    assert "Traceback" not in out and "failed with" not in out
    study = _study(url, name)
    assert states(study) == {"FAIL": 1, "COMPLETE": 1}
    retry = study.trials[-1]
    assert retry.system_attrs["failed_trial"] == victim.number
    assert retry.user_attrs["resumed_from_epoch"] >= 1
    assert not list((tmp_path / "artifacts").glob("checkpoint-*"))


@pytest.mark.postgres
@pytest.mark.parametrize("where", ["userinfo", "query"])
def test_credentials_never_appear_in_logs_or_exports(postgres, tmp_path: Path, where):
    url, name = postgres
    secret = "s3cretpw"  # trust authentication ignores it; it must still never leak
    if where == "userinfo":
        with_password = url.replace("postgres@", f"postgres:{secret}@", 1)
    else:  # libpq's password= query parameter, which SQLAlchemy passes on as it is
        with_password = f"{url}?password={secret}"
    assert secret in with_password
    spec = worker_spec(tmp_path, with_password, name, {"training": {"pictures": True}})
    run = Proc(tmp_path, "run", spec, "--workers", "2", "--n-trials", "3")
    cmdlines = wait_for(lambda: _worker_cmdlines(name), 60, "worker processes")
    assert not any(secret in c for c in cmdlines), cmdlines  # `ps` shows no password
    assert run.wait() == 0, run.output
    outputs = [run.output]
    runner = CliRunner()
    env = {"VAE_TUNE_STORAGE": with_password}
    for args in (
        ["studies"],
        ["export-best", "--study-name", name, "--output", str(tmp_path / "best.yaml")],
        ["report", "--study-name", name, "--output", str(tmp_path / "report.html")],
        ["worker", "--study-name", name],
    ):
        result = runner.invoke(app, args, env=env)
        assert result.exit_code == 0, result.output
        outputs.append(result.output)
    no_db = make_url(with_password).set(database="nodb").render_as_string(hide_password=False)
    assert secret in no_db
    bad = runner.invoke(app, ["studies", "--storage", no_db])
    assert bad.exit_code != 0
    outputs.append(bad.output)
    study = _study(url, name)
    stored = json.dumps(
        [study.user_attrs] + [[t.user_attrs, t.system_attrs] for t in study.trials],
        default=str,
    )
    assert "***" in study.user_attrs["spec"]["storage"]
    for text in [*outputs, stored, (tmp_path / "best.yaml").read_text()]:
        assert secret not in text
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.suffix != ".yaml" or path.name == "best.yaml":
            assert secret.encode() not in path.read_bytes(), path


def _worker_cmdlines(name: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "vae_tune.cli import main; main() worker" in cmd and name in cmd:
            found.append(cmd)
    return found


def test_run_picks_one_single_threaded_worker_per_core_by_default(tmp_path: Path, monkeypatch):
    """`--workers auto` (the default): on a CPU one worker per core, one torch thread each
    (SQLite: at most 4); the tiny spec fixes no thread count."""
    from vae_tune.training.hardware import available_cores

    monkeypatch.delenv("VAE_TUNE_WORKERS")
    url = f"sqlite:///{tmp_path / 's.db'}"
    spec = worker_spec(tmp_path, url, "auto", {"training": {"threads": 0}})
    code, out = _run(tmp_path, "run", str(spec), "--n-trials", "4")
    assert code == 0, out
    expected = min(available_cores(), 4)
    if expected > 1:
        assert f"{expected} workers (cpu, 1 torch thread(s) each)" in out, out
        assert out.count("joined study") == expected
    assert states(_study(url, "auto")) == {"COMPLETE": 4}


def test_trials_per_device_shares_each_gpu(monkeypatch):
    """K workers per CUDA device (torch's CUDA probe answered as on a 2-GPU machine)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    both = share_devices(["cuda:0", "cuda:1"], 2, "auto")
    assert both == ["cuda:0", "cuda:0", "cuda:1", "cuda:1"]
    assert share_devices([], 3, "cuda") == ["cuda"] * 3  # the spec's device
    assert share_devices(["cuda:1"], 1, "cpu") == ["cuda:1"]


def test_trials_per_device_on_a_cpu_exits_2_naming_it(cli, write_spec, db_url):
    result = cli("run", write_spec(), "--trials-per-device", "2")
    assert result.exit_code == 2, result.output
    assert "trials-per-device" in result.output and "--workers" in result.output
    assert optuna.get_all_study_names(db_url) == []
