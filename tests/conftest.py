"""Shared fixtures: a temporary SQLite storage, tiny specs on the embedded digits, the CLI."""

from __future__ import annotations

import os

# Two test processes and their subprocesses share as many cores: an OpenMP thread that spins
# while it waits for work only takes the CPU from another process there (15-20 % of the CPU
# time of the in-process training tests). Set before torch loads OpenMP; subprocesses inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import copy  # noqa: E402
import gc  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import TINY_SPEC, merge, postgres_database
from typer.testing import CliRunner

from vae_tune.cli import app
from vae_tune.training import hardware

# Per-architecture precision readings go to a folder of this session, not the user's cache.
if hardware.PRECISION_CACHE_ENV not in os.environ:  # the test processes inherit the first's
    os.environ[hardware.PRECISION_CACHE_ENV] = tempfile.mkdtemp(prefix="vae-tune-precision-")

# The bf16 probe runs once, here, and CLI subprocesses inherit its reading. A CPU may list AMX
# that its host does not enable (oneDNN then fails on bf16): the bf16 tests check numerics, not
# speed, so there oneDNN is kept to AVX-512 BF16, set before this process runs any torch op.
if (
    hardware.cpu_lists_bf16()
    and hardware.cpu_bf16_reading().startswith("unavailable")
    and "ONEDNN_MAX_CPU_ISA" not in os.environ
):
    os.environ["ONEDNN_MAX_CPU_ISA"] = "AVX512_CORE_BF16"
    del os.environ[hardware.PROBE_ENV]
    hardware.cpu_bf16_reading.cache_clear()
    hardware.cpu_bf16_reading()


def pytest_collection_modifyitems(items):
    """A test that needs a PostgreSQL server is an integration test too (the fast tier,
    `pytest -m "not integration"`, needs no server, no subprocess and no browser)."""
    for item in items:
        if item.get_closest_marker("postgres"):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def postgres_connections_closed(request):
    """A PostgreSQL test's storages (Optuna opens one per call with a URL) hold pooled
    connections until collected: collect them after the test, so the suite never holds a
    server's max_connections (100 by default) of idle ones."""
    yield
    if "postgres" in request.node.name or request.node.get_closest_marker("postgres"):
        gc.collect()


@pytest.fixture(autouse=True)
def trials_in_process(monkeypatch):
    """`vae-tune run` picks its worker count (auto); the tests run trials in the test's own
    process unless they ask for workers (tests/test_workers.py checks auto)."""
    monkeypatch.setenv("VAE_TUNE_WORKERS", "1")


@pytest.fixture(autouse=True)
def own_cache(tmp_path_factory, monkeypatch):
    """Caches (downloads, `evaluate`'s feature classifiers) go to a folder of the test session,
    never the user's ~/.cache/vae-tune."""
    monkeypatch.setenv("VAE_TUNE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def pg_url():
    """A PostgreSQL database of the test's own (skips, or fails in CI, without a server)."""
    with postgres_database() as url:
        yield url


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'study.db'}"


@pytest.fixture
def write_spec(tmp_path: Path, db_url: str):
    """Write a tiny spec (deep-merged with `changes`) to a file and return its path."""

    def write(changes: dict[str, Any] | None = None, name: str = "spec.yaml") -> Path:
        spec = copy.deepcopy(TINY_SPEC)
        spec["storage"] = db_url
        merge(spec, changes or {})
        path = tmp_path / name
        path.write_text(yaml.safe_dump(spec))
        return path

    return write


@pytest.fixture
def cli():
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args])

    return invoke
