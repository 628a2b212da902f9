"""Shared fixtures: a temporary SQLite storage, tiny specs on the embedded digits, the CLI."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from tuner.cli import app

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
    "training": {"epochs": 2, "device": "cpu", "threads": 1},
    "sampler": {"name": "random"},
    "pruner": {"name": "none"},
    "budget": {"n_trials": 2},
}


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


def merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `changes` into the spec dict `base` (nested dicts merge, values replace)."""
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


@pytest.fixture
def cli():
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args])

    return invoke
