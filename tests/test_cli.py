"""Small things a new user meets first: the version, which flag or file is wrong, near-miss
study names."""

from __future__ import annotations

import pytest

from vae_tune.version import __version__


def test_version(cli):
    result = cli("--version")
    assert result.exit_code == 0 and result.output.strip() == f"vae-tune {__version__}"


def test_a_bad_flag_is_blamed_on_the_flag_not_the_spec(cli, write_spec, tmp_path):
    result = cli("run", write_spec(), "--sampler", "tpee")
    assert result.exit_code == 2
    assert "sampler.name" in result.output and "given by --sampler" in result.output
    assert not (tmp_path / "study.db").exists()


def test_train_of_a_missing_file_does_not_offer_study_specs(cli, tmp_path):
    result = cli("train", tmp_path / "missing.yaml")
    assert result.exit_code == 2
    assert "export-best" in result.output and "quickstart" not in result.output


@pytest.mark.integration
def test_a_mistyped_study_name_gets_a_suggestion(cli, write_spec, db_url, tmp_path):
    assert cli("run", write_spec({"budget": {"n_trials": 1}})).exit_code == 0
    result = cli(
        "export-best", "--study-name", "tinny", "--storage", db_url, "--output", tmp_path / "b.yaml"
    )
    assert result.exit_code == 2 and "did you mean 'tiny'?" in result.output


@pytest.mark.integration
def test_run_takes_an_artifact_dir(cli, write_spec, tmp_path):
    store = tmp_path / "elsewhere"
    result = cli("run", write_spec({"budget": {"n_trials": 1}}), "--artifact-dir", store)
    assert result.exit_code == 0, result.output
    files = [p for p in store.rglob("*") if p.is_file()]
    assert len(files) == 2 and all(f.read_bytes()[:4] == b"\x89PNG" for f in files)


@pytest.mark.integration
def test_studies_and_export_best_speak_json(cli, write_spec, db_url):
    import json

    assert cli("run", write_spec({"budget": {"n_trials": 2}})).exit_code == 0
    rows = json.loads(cli("studies", "--storage", db_url, "--json").output)
    assert rows[0]["study"] == "tiny" and rows[0]["vae_tune"] is True
    assert rows[0]["trials"]["complete"] == 2 and rows[0]["best_architecture"] == "mlp"
    table = cli("studies", "--storage", db_url).output
    assert "tiny" in table and "mlp" in table and "sqlite:///" in table
    config = json.loads(
        cli("export-best", "--study-name", "tiny", "--storage", db_url, "--json").output
    )
    assert config["source"]["value"] == rows[0]["best_value"]
    assert config["model"]["architecture"] == "mlp"


@pytest.mark.integration
def test_progress_without_a_terminal_is_plain_lines(cli, write_spec, monkeypatch):
    import vae_tune.reporting.progress

    # every epoch, for the test
    monkeypatch.setattr(vae_tune.reporting.progress, "PROGRESS_EVERY_S", 0.0)
    result = cli("run", write_spec({"budget": {"n_trials": 1}}))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    epochs = [ln for ln in lines if "epoch 1/2  validation ELBO" in ln or "epoch 2/2" in ln]
    assert len(epochs) == 2 and "\r" not in result.output and "\x1b[" not in result.output
    assert any(ln.startswith("trial    0  COMPLETE") for ln in lines)
