"""Helpers the tests share: the tiny spec, a deep merge, free ports, JSON over HTTP, the
PostgreSQL the PostgreSQL tests need (a database each, or a server of their own), CLI
processes in the background, polling."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy
import yaml
from held_vae import GATE_ENV

from vae_tune.tuning.storage import open_storage, unreachable

PG_URL = os.environ.get(
    "VAE_TUNE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)

TINY_SPEC: dict[str, Any] = {
    "study_name": "tiny",
    "seed": 0,
    "dataset": {"name": "digits", "subset": 300},
    "search_space": {
        "architecture": "mlp",
        "latent_dim": {"low": 2, "high": 8, "log": True, "grid": [2, 4]},
        "beta": {"low": 0.5, "high": 2.0, "log": True, "grid": [0.5, 1.0]},
        "lr": {"low": 1.0e-3, "high": 1.0e-2, "log": True, "grid": [3.0e-3, 1.0e-2]},
        "batch_size": 64,
        "mlp": {"hidden_dim": 32, "depth": 1},
    },
    # fp32: `precision: auto` would time each architecture in bf16 and fp32 on a bf16 CPU (up
    # to 13 s each); auto is tested with injected readings (test_precision, test_cost_aware)
    # and for real where the tutorials run as written (tests/test_docs.py)
    "training": {"epochs": 2, "device": "cpu", "threads": 1, "precision": "fp32"},
    "sampler": {"name": "random"},
    "pruner": {"name": "none"},
    "budget": {"n_trials": 2},
}


def merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `changes` into the spec dict `base` (nested dicts merge, values replace)."""
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 0, alive: Any = None) -> Any:
    """GET `url` as JSON; with `timeout`, retry until it answers (asserting `alive()` holds
    meanwhile); None if it does not answer."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return json.loads(r.read())
        except OSError:
            if time.monotonic() >= deadline:
                return None
            if alive is not None:
                assert alive(), f"the server of {url} exited"
            time.sleep(0.3)


def postgres_url() -> str:
    """The test server's URL; skip (or fail, with VAE_TUNE_REQUIRE_POSTGRES=1) without one."""
    reason = unreachable(PG_URL)
    if reason:
        _require_postgres(reason)
    return PG_URL


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A database of its own on the test server (so tests, and two suites side by side, never
    share tables or connections), dropped afterwards with any connection still on it."""
    server = sqlalchemy.make_url(postgres_url())
    name = f"vt_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(
        server, poolclass=sqlalchemy.pool.NullPool, isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


class PrivatePostgres:
    """A PostgreSQL server of the test's own (initdb in a temporary folder, a free port): a
    test may restart it without touching the shared server other tests and suites use."""

    def __init__(self):
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        initdb = shutil.which("initdb") or (str(found[-1]) if found else None)
        if initdb is None:
            _require_postgres("no initdb here to create a PostgreSQL server with")
        self.bin = Path(initdb).parent
        # initdb refuses root: as root, the server runs as the postgres user
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        # a folder of its own under /tmp: pytest's tmp_path is closed to other users
        self.folder = Path(tempfile.mkdtemp(prefix="vae-tune-pg-"))
        if self.as_user:
            shutil.chown(self.folder, "postgres")
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self._pg("initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync")

    @property
    def data(self) -> str:
        return str(self.folder / "data")

    def _pg(self, tool: str, *args: str) -> None:
        done = subprocess.run(
            [*self.as_user, str(self.bin / tool), *args], capture_output=True, text=True
        )
        assert done.returncode == 0, f"{tool} failed: {done.stdout}{done.stderr}"

    def _ctl(self, action: str) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.folder / "server.log")
        self._pg("pg_ctl", "-D", self.data, "-l", log, "-o", options, "-m", "fast", "-w", action)

    def start(self) -> None:
        self._ctl("start")

    def restart(self) -> None:
        self._ctl("restart")

    def stop(self) -> None:
        """Stop the server and delete its files."""
        try:
            self._ctl("stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


def _require_postgres(reason: str) -> None:
    if os.environ.get("VAE_TUNE_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"{reason}, and VAE_TUNE_REQUIRE_POSTGRES=1")
    pytest.skip(reason)


def chromium() -> str:
    """Path of a headless-capable Chromium; skip (or fail, with VAE_TUNE_REQUIRE_BROWSER=1)
    without one. Debian: `apt-get install chromium`."""
    import shutil

    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("VAE_TUNE_REQUIRE_BROWSER") == "1":
            pytest.fail("no chromium on PATH, and VAE_TUNE_REQUIRE_BROWSER=1")
        pytest.skip("no chromium on PATH (apt-get install chromium)")
    return found


def browse(url: str, *extra: str, timeout: float = 120) -> tuple[str, list[str]]:
    """Load `url` in headless Chromium with the network off (every host name fails to
    resolve, but 127.0.0.1); return the DOM after scripts ran and the page's console messages."""
    import subprocess

    args = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--enable-logging=stderr",
        "--v=0",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--virtual-time-budget=15000",
        "--window-size=1200,900",
        *extra,
        url,
    ]
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return done.stdout, console


def train_run_dir(folder: Path, **changes: Any) -> Path:
    """`vae-tune train --output FOLDER/run` of a small MLP on the digits (12 epochs) with
    `changes` to its run config; returns the run directory."""
    from typer.testing import CliRunner

    from vae_tune.cli import app

    config = {
        "dataset": {"name": "digits"},
        "model": {"architecture": "mlp", "latent_dim": 6, "hidden_dim": 64},
        "epochs": 12,
        "lr": 3.0e-3,
        "device": "cpu",
        "threads": 1,
        **changes,
    }
    (folder / "run.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(
        app, ["train", str(folder / "run.yaml"), "--output", str(folder / "run")]
    )
    assert result.exit_code == 0, result.output
    return folder / "run"


CLI = str(Path(sys.executable).with_name("vae-tune"))


class Proc:
    """A vae-tune command in the background, its output in a file (no pipe to fill up)."""

    def __init__(self, tmp_path: Path, *args: str, env: dict[str, str] | None = None):
        self.log = tmp_path / f"out-{uuid.uuid4().hex[:6]}.txt"
        self._file = self.log.open("w")
        self.popen = subprocess.Popen(
            [CLI, *args],
            stdout=self._file,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env={**os.environ, **(env or {})},
        )

    def wait(self, timeout: float = 180) -> int:
        try:
            return self.popen.wait(timeout=timeout)
        finally:
            if self.popen.poll() is None:
                self.popen.kill()
            self._file.close()

    @property
    def output(self) -> str:
        return self.log.read_text()


def wait_for(what: Callable[[], Any], timeout: float = 90, message: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = what()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {message or what}")


_STORAGES: dict[tuple[str, str], Any] = {}


def open_study(url: str, name: str) -> optuna.Study:
    """The study `name` at any vae-tune storage URL (database, grpc://, journal://). The
    storage is opened once per URL and study: a test polling a study (`wait_for`) then sees
    each change within a poll, not after opening a new connection pool every time. Not once
    per URL: the tests of a module share one storage proxy, whose client caches each study's
    finished trials by study id, and SQLite gives a deleted study's id to the next one (the
    next test's trials stayed hidden behind the last one's)."""
    if (url, name) not in _STORAGES:
        _STORAGES[(url, name)] = open_storage(url)
    return optuna.load_study(study_name=name, storage=_STORAGES[(url, name)])


HEARTBEAT = ["--heartbeat-interval", "1", "--heartbeat-grace", "3"]

# tiny trials (a fraction of a second): budget and grid bookkeeping
FAST: dict[str, Any] = merge(
    copy.deepcopy({k: v for k, v in TINY_SPEC.items() if k not in ("study_name", "budget")}),
    {
        "dataset": {"subset": 200},
        "search_space": {"mlp": {"hidden_dim": 16}},
        "training": {"iw_samples": 0, "pictures": False},
    },
)
# trials of a few seconds (about 0.4 s per epoch on one core): time for a kill or a fault to
# land in the middle of one
SLOW_CHANGES: dict[str, Any] = {
    "dataset": {"name": "digits", "subset": 600},
    "search_space": {
        "latent_dim": {"low": 2, "high": 8, "log": True},
        "beta": 1.0,
        "lr": 3.0e-3,
        "batch_size": 4,
        "mlp": {"hidden_dim": 256, "depth": 3},
    },
    "training": {"epochs": 4},
}


def worker_spec(tmp_path: Path, url: str, name: str, *changes: dict[str, Any]) -> Path:
    """A FAST spec file for study `name` at `url`, with `changes` merged in."""
    spec = copy.deepcopy(FAST)
    spec.update(study_name=name, storage=url, artifact_dir=str(tmp_path / "artifacts"))
    for change in changes:
        merge(spec, copy.deepcopy(change))
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def states(study: optuna.Study) -> Counter:
    """The study's trials counted by state name."""
    return Counter(t.state.name for t in study.get_trials(deepcopy=False))


HELD_VAE = f"{Path(__file__).resolve().parent / 'held_vae.py'}:HeldMLP"
# SLOW_CHANGES on `tests/held_vae.py`'s MLP: with `Gate` set, each trial holds at its second
# validation (a checkpoint saved) until the test opens the gate
HELD_CHANGES: dict[str, Any] = merge(
    copy.deepcopy(SLOW_CHANGES),
    {
        "architectures": {"held": HELD_VAE},
        "search_space": {"architecture": "held", "held": {"hidden_dim": 256, "depth": 3}},
    },
)


class Gate:
    """The file a held trial waits for (`tests/held_vae.py`): `env` for the processes that
    train, `open()` once the test has struck."""

    def __init__(self, folder: Path):
        self.path = folder / f"gate-{uuid.uuid4().hex[:6]}"
        self.env = {GATE_ENV: str(self.path)}

    def open(self) -> None:
        self.path.touch()

    def held(self, pid: int) -> Path:
        """The file that says process `pid` holds a trial at the gate (between its writes)."""
        return self.path.with_name(f"{self.path.name}.held-{pid}")
