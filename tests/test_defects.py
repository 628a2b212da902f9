"""Defects a careful new user found (issue 7), each through the real CLI on real SQLite.

Every test here failed before its fix. The PostgreSQL cases (credentials in a `password=`
query parameter, names longer than the server stores) are in tests/test_workers.py and below.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import sqlalchemy
import yaml

CLI = str(Path(sys.executable).with_name("vae-tune"))
FAST = {
    "training": {"iw_samples": 0, "pictures": False},
    "search_space": {"mlp": {"hidden_dim": 16}},
}


def _load(db_url: str, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=db_url)


def _points(study: optuna.Study) -> list[tuple]:
    return [tuple(sorted(t.params.items())) for t in study.trials]


# 1. script injection ----------------------------------------------------------------------------


@pytest.mark.integration
def test_report_escapes_a_script_in_the_study_name(cli, write_spec, db_url, tmp_path):
    evil = "<script>alert(1)</script>"
    spec = write_spec(FAST)
    assert cli("run", spec, "--study-name", evil, "--n-trials", "2").exit_code == 0
    out = tmp_path / "r.html"
    result = cli("report", "--study-name", evil, "--storage", db_url, "--output", out)
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert evil not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.startswith("<!DOCTYPE html>")


# 2. credentials in query parameters -------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://u:s3cret@h:5432/db",
        "postgresql+psycopg://u@h:5432/db?password=s3cret",
        "postgresql+psycopg://u@h/db?sslmode=require&sslpassword=s3cret",
        "mysql+pymysql://u@h/db?passwd=s3cret",
    ],
)
@pytest.mark.integration
def test_every_credential_of_a_url_is_masked(url):
    from vae_tune.tuning.storage import mask_url, redact

    assert "s3cret" not in mask_url(url) and "***" in mask_url(url)
    assert redact(f"failed for {url}: s3cret", url).count("s3cret") == 0


def test_query_password_is_masked_in_connection_errors(cli):
    url = "postgresql+psycopg://postgres@127.0.0.1:1/test?password=s3cret"
    result = cli("studies", "--storage", url)
    assert result.exit_code == 1
    assert "s3cret" not in result.output and "password=***" in result.output


# 3. resuming draws new points ---------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_resumed_runs_draw_new_points_reproducibly(cli, write_spec, db_url, tmp_path, sampler):
    spec = write_spec({**FAST, "sampler": {"name": sampler}})
    for _ in range(3):
        assert cli("run", spec, "--n-trials", "2").exit_code == 0
    points = _points(_load(db_url))
    assert len(points) == 6 and len(set(points)) == 6, points
    # the same spec in a fresh database draws the same sequence again
    other = f"sqlite:///{tmp_path / 'other.db'}"
    for _ in range(3):
        assert cli("run", spec, "--n-trials", "2", "--storage", other).exit_code == 0
    assert _points(_load(other)) == points


# 4. concurrent runs add up ----------------------------------------------------------------------


@pytest.mark.integration
def test_two_concurrent_runs_finish_both_budgets(write_spec, db_url, tmp_path):
    spec = write_spec(FAST)
    procs = [
        subprocess.Popen(
            [CLI, "run", str(spec), "--n-trials", "3"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=tmp_path,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    study = _load(db_url)
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) == 6, outs
    assert len(set(_points(study))) == 6  # and concurrent runs do not repeat each other


# 5. foreign studies are refused -----------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_a_plain_optuna_study_of_that_name_is_refused(cli, write_spec, db_url, tmp_path, direction):
    foreign = optuna.create_study(study_name="tiny", storage=db_url, direction=direction)
    foreign.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    result = cli("run", write_spec(FAST))
    assert result.exit_code == 2, result.output
    assert "'tiny'" in result.output and "not made by vae-tune" in result.output
    assert len(_load(db_url).trials) == 2  # nothing appended
    out = tmp_path / "best.yaml"
    export = cli("export-best", "--study-name", "tiny", "--storage", db_url, "--output", out)
    assert export.exit_code == 2 and "not made by vae-tune" in export.output
    assert not out.exists()
    joined = cli("worker", "--study-name", "tiny", "--storage", db_url)
    assert joined.exit_code == 2 and "not made by vae-tune" in joined.output


# 6. sampler options are checked before anything is written ---------------------------------------


def test_wrong_type_sampler_option_exits_2_naming_it(cli, write_spec, tmp_path):
    spec = write_spec({"sampler": {"name": "tpe", "options": {"n_startup_trials": "abc"}}})
    result = cli("run", spec)
    assert result.exit_code == 2, result.output
    assert "sampler.options.n_startup_trials" in result.output
    assert not (tmp_path / "study.db").exists()
    pruner = write_spec({"pruner": {"name": "median", "options": {"n_warmup_steps": "x"}}})
    result = cli("run", pruner)
    assert result.exit_code == 2 and "pruner.options.n_warmup_steps" in result.output


# 7. numbers written 1e-4 -------------------------------------------------------------------------


@pytest.mark.integration
def test_exponent_numbers_without_a_dot_are_numbers_everywhere(cli, tmp_path, db_url):
    text = f"""
study_name: tiny
storage: {db_url}
dataset: {{name: digits, subset: 200}}
search_space:
  architecture: mlp
  latent_dim: 2
  lr: {{low: 1e-4, high: 1e-2, log: true, grid: [1e-3, 1e-2]}}
  beta: {{choices: [1e-1, 1e0]}}
  weight_decay: 1e-5
  mlp: {{hidden_dim: 16}}
training: {{epochs: 1, device: cpu, threads: 1, precision: fp32, iw_samples: 0, pictures: false}}
sampler: grid
pruner: none
"""
    spec = tmp_path / "e.yaml"
    spec.write_text(text)
    result = cli("run", spec)
    assert result.exit_code == 0, result.output
    trials = _load(db_url).trials
    assert sorted({t.params["lr"] for t in trials}) == [1e-3, 1e-2]
    assert {t.params["beta"] for t in trials} == {0.1, 1.0}
    assert all(t.user_attrs["config"]["weight_decay"] == 1e-5 for t in trials)


# 8. run configs are validated as models ----------------------------------------------------------


def _run_config(tmp_path: Path, **model) -> Path:
    config = {
        "dataset": {"name": "digits", "subset": 100},
        "model": {"architecture": "mlp", "hidden_dim": 16, **model},
        "epochs": 1,
        "device": "cpu",
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(
    ("model", "field"),
    [
        ({"hidden_dim": -32}, "model.hidden_dim"),
        ({"latent_dim": 0}, "model.latent_dim"),
        ({"hidden_dim": "abc"}, "model.hidden_dim"),
        ({"depth": 1.5}, "model.depth"),
        ({"width": 3}, "model.width"),
        ({"architecture": "rnn", "hidden_dim": None, "cell": "tanh"}, "model.cell"),
    ],
)
def test_bad_model_fields_in_a_run_config_exit_2(cli, tmp_path, model, field):
    model = {k: v for k, v in model.items() if v is not None}
    if model.get("architecture") == "rnn":
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump({"model": model, "epochs": 1, "device": "cpu"}))
    else:
        path = _run_config(tmp_path, **model)
    result = cli("train", path)
    assert result.exit_code == 2, result.output
    assert field in result.output
    assert "Traceback" not in result.output and "epoch" not in result.output.split(":")[0]


# 9. readers never create databases ---------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["studies"],
        ["export-best", "--study-name", "x", "--output", "best.yaml"],
        ["report", "--study-name", "x", "--output", "r.html"],
        ["dashboard", "--port", "1"],
    ],
    ids=lambda a: a[0],
)
def test_reading_commands_never_create_a_database(cli, tmp_path, args, monkeypatch):
    monkeypatch.chdir(tmp_path)
    typo = tmp_path / "typo.db"
    result = cli(*args, "--storage", f"sqlite:///{typo}")
    assert result.exit_code == 2, result.output
    assert "no such database file" in result.output
    assert list(tmp_path.iterdir()) == []


def test_dashboard_with_a_bad_port_writes_nothing(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli("dashboard", "--port", "99999")
    assert result.exit_code == 2
    assert list(tmp_path.iterdir()) == []


# 10. train --save is checked before training ------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("where", ["missing/w.pt", "readonly/w.pt", "adir"])
def test_train_save_to_a_bad_path_fails_before_training(cli, tmp_path, where):
    (tmp_path / "readonly").mkdir(mode=0o500)
    (tmp_path / "adir").mkdir()
    if os.geteuid() == 0 and where.startswith("readonly"):
        pytest.skip("root writes to read-only folders")
    result = cli("train", _run_config(tmp_path), "--save", tmp_path / where)
    assert result.exit_code == 2, result.output
    assert "save" in result.output and "epoch" not in result.output


def test_train_save_writes_the_weights(cli, tmp_path):
    import torch

    out = tmp_path / "w.pt"
    result = cli("train", _run_config(tmp_path), "--save", out)
    assert result.exit_code == 0, result.output
    saved = torch.load(out, weights_only=True)
    assert saved["config"]["model"]["hidden_dim"] == 16 and saved["model"]


# 11. one clear line instead of a traceback --------------------------------------------------------


def test_deeply_nested_yaml_is_a_clear_error(cli, tmp_path):
    spec = tmp_path / "deep.yaml"
    spec.write_text("study_name: x\nsearch_space: " + "[" * 1000 + "]" * 1000 + "\n")
    result = cli("run", spec)
    assert result.exit_code == 2
    assert "Traceback" not in result.output and len(result.output.splitlines()) <= 3


def test_a_file_of_random_bytes_is_no_database(cli, tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(os.urandom(4096))
    result = cli("studies", "--storage", f"sqlite:///{junk}")
    assert result.exit_code == 2, result.output
    assert "is not a SQLite database" in result.output and "Traceback" not in result.output


def test_a_non_numeric_port_is_a_clear_error(cli):
    result = cli("studies", "--storage", "postgresql+psycopg://u:s3cret@host:abc/db")
    assert result.exit_code == 2
    assert "not a database URL" in result.output and "s3cret" not in result.output


@pytest.fixture
def study_with_trials(cli, write_spec, db_url):
    assert cli("run", write_spec(FAST), "--n-trials", "2").exit_code == 0
    return db_url


@pytest.mark.integration
@pytest.mark.parametrize("command", ["export-best", "report"])
@pytest.mark.parametrize("where", ["missing/out", "adir"])
def test_outputs_to_bad_paths_exit_2_and_leave_nothing(
    cli, study_with_trials, tmp_path, command, where
):
    (tmp_path / "adir").mkdir()
    out = tmp_path / (where + (".yaml" if command == "export-best" else ".html"))
    if where == "adir":
        out = tmp_path / "adir"

    def files() -> set[Path]:  # SQLite's own -wal/-shm come and go as connections close
        return {p for p in tmp_path.rglob("*") if not p.name.endswith(("-wal", "-shm"))}

    before = files()
    result = cli(command, "--study-name", "tiny", "--storage", study_with_trials, "--output", out)
    assert result.exit_code == 2, result.output
    assert "output" in result.output and "Traceback" not in result.output
    assert files() == before  # no half-written or .tmp file


@pytest.mark.integration
def test_dashboard_on_a_port_in_use_says_so(cli, study_with_trials):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = cli("dashboard", "--storage", study_with_trials, "--port", port)
    assert result.exit_code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.output
    assert "Listening" not in result.output and "Traceback" not in result.output


@pytest.mark.integration
def test_a_full_database_is_one_line(cli, write_spec, db_url, tmp_path):
    """SQLite's own 'database or disk is full' (page limit reached), as a full disk gives it."""
    spec = write_spec(FAST)
    assert cli("run", spec, "--n-trials", "1").exit_code == 0
    db = Path(db_url.removeprefix("sqlite:///"))
    with sqlite3_connection(db) as conn:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]

    def limit(dbapi_connection, _record):
        dbapi_connection.execute(f"PRAGMA max_page_count = {pages}")

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "connect", limit)
    try:
        result = cli("run", spec, "--n-trials", "20")
    finally:
        sqlalchemy.event.remove(sqlalchemy.engine.Engine, "connect", limit)
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1] == "error: storage: database or disk is full"
    assert "Traceback" not in result.output


def sqlite3_connection(path: Path):
    import contextlib
    import sqlite3

    return contextlib.closing(sqlite3.connect(path))


def test_a_study_name_longer_than_storage_holds_is_refused(cli, write_spec, tmp_path):
    result = cli("run", write_spec(FAST), "--study-name", "x" * 513)
    assert result.exit_code == 2 and "study_name" in result.output
    assert not (tmp_path / "study.db").exists()


# 12. names that are safe to paste and to list -----------------------------------------------------


@pytest.mark.integration
def test_export_hint_is_quoted_for_the_shell(cli, write_spec):
    result = cli("run", write_spec(FAST), "--study-name", "it's <mine>", "--n-trials", "1")
    assert result.exit_code == 0, result.output
    assert "--study-name 'it'\"'\"'s <mine>' --output best.yaml" in result.output


@pytest.mark.integration
def test_a_newline_in_a_study_name_keeps_the_table_one_line_a_study(cli, write_spec, db_url):
    bad = cli("run", write_spec(FAST), "--study-name", "two\nlines")
    assert bad.exit_code == 2 and "study_name" in bad.output
    optuna.create_study(study_name="two\nlines", storage=db_url)  # made by someone else
    listed = cli("studies", "--storage", db_url)
    assert listed.exit_code == 0
    row = next(line for line in listed.output.splitlines() if "two" in line)
    assert "two\\nlines (not vae-tune)" in row  # one row, the newline shown escaped
    assert not any(line.strip("│ ") == "lines" for line in listed.output.splitlines())
