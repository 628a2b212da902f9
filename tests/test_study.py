"""Real studies on real SQLite with real (tiny) training, through the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from vae_tune.tuning.samplers import PRUNERS


def _load(db_url: str, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=db_url)


@pytest.mark.integration
def test_run_completes_trials_with_elbo_and_attributes(cli, write_spec, db_url):
    result = cli("run", write_spec({"budget": {"n_trials": 2}}))
    assert result.exit_code == 0, result.output
    assert "Best: trial" in result.output and "2 complete" in result.output
    study = _load(db_url)
    assert study.user_attrs["spec"]["study_name"] == "tiny"
    assert "vae_tune_version" in study.user_attrs
    for t in study.trials:
        assert t.state == TrialState.COMPLETE
        assert t.value < 0  # an ELBO in nats per example
        assert sorted(t.intermediate_values) == [1, 2]
        attrs = t.user_attrs
        for key in (
            "val_recon",
            "val_kl",
            "active_units",
            "num_parameters",
            "epochs_run",
            "wall_seconds",
            "train_examples_per_s",
            "device",
            "seed",
            "config",
        ):
            assert key in attrs, key
        assert attrs["val_recon"] - attrs["val_kl"] == pytest.approx(t.value)
        assert attrs["device"] == "cpu" and attrs["epochs_run"] == 2
        # its per-epoch checkpoint was deleted when it finished, and nothing names it any more
        assert attrs.get("checkpoint") is None


@pytest.mark.integration
def test_objective_is_beta_one_elbo_whatever_beta_trains(cli, write_spec, db_url):
    """Two trials differing only in beta report ELBOs that are recon - KL at beta = 1."""
    spec = write_spec(
        {
            "sampler": "grid",
            "search_space": {
                "latent_dim": 4,
                "lr": 3.0e-3,
                "beta": {"low": 0.1, "high": 10.0, "grid": [0.1, 10.0]},
            },
        }
    )
    assert cli("run", spec).exit_code == 0
    trials = {t.params["beta"]: t for t in _load(db_url).trials}
    for t in trials.values():
        assert t.value == pytest.approx(t.user_attrs["val_recon"] - t.user_attrs["val_kl"])
    # a large beta squeezes the KL: the objective sees that trade-off, not beta * KL
    assert trials[10.0].user_attrs["val_kl"] < trials[0.1].user_attrs["val_kl"]


@pytest.mark.integration
def test_grid_2x2x2_runs_exactly_8_distinct_configs_once(cli, write_spec, db_url):
    spec = write_spec({"sampler": "grid", "budget": {"n_trials": None}})
    result = cli("run", spec)
    assert result.exit_code == 0, result.output
    trials = _load(db_url).trials
    assert len(trials) == 8
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 8
    again = cli("run", spec)  # the grid is covered: resuming adds nothing
    assert again.exit_code == 0
    assert len(_load(db_url).trials) == 8


@pytest.mark.integration
def test_grid_with_conditional_knobs_has_no_duplicates(cli, write_spec, db_url):
    spec = write_spec(
        {
            "sampler": "grid",
            "budget": {"n_trials": None},
            "search_space": {
                "beta": 1.0,
                "lr": 3.0e-3,
                "architecture": {"choices": ["mlp", "conv"]},
                "mlp": {"hidden_dim": {"low": 16, "high": 32, "grid": [16, 32]}},
                "conv": {"channels": {"low": 4, "high": 8, "grid": [4]}, "depth": 1},
            },
        }
    )
    assert cli("run", spec).exit_code == 0
    trials = _load(db_url).trials
    # mlp: 2 latent x 2 widths; conv: 2 latent x 1 channel count
    assert len(trials) == 6
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 6
    assert all(
        ("mlp_hidden_dim" in t.params) == (t.params["architecture"] == "mlp") for t in trials
    )


@pytest.mark.integration
def test_hopeless_learning_rates_are_pruned(cli, write_spec, db_url):
    spec = write_spec(
        {
            "sampler": "grid",
            "budget": {"n_trials": None},
            "training": {"epochs": 3},
            "search_space": {
                "beta": 1.0,
                "latent_dim": 4,
                "lr": {
                    "low": 1.0e-8,
                    "high": 1.0e-2,
                    "log": True,
                    "grid": [1.0e-2, 1.0e-8, 2.0e-8, 3.0e-8],
                },
            },
            "pruner": {"name": "median", "options": {"n_startup_trials": 1, "n_warmup_steps": 0}},
        }
    )
    assert cli("run", spec).exit_code == 0
    trials = _load(db_url).trials
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, [(t.params, t.state) for t in trials]
    assert all(t.params["lr"] < 1e-6 for t in pruned)
    assert all(t.user_attrs["stop_reason"].startswith("pruned after epoch") for t in pruned)
    assert any(t.state == TrialState.COMPLETE and t.params["lr"] == 1e-2 for t in trials)
    # stopped early for its ELBO, a trial has no collapse verdict (its few active units say
    # only that it stopped early); a completed one has one, and the summaries count only those
    assert all("posterior_collapse" not in t.user_attrs for t in pruned)
    assert all("active_units" in t.user_attrs for t in pruned)  # its diagnostics are kept
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert all(isinstance(t.user_attrs["posterior_collapse"], bool) for t in complete)


@pytest.mark.integration
def test_nan_config_is_recorded_with_reason_and_study_goes_on(cli, write_spec, db_url):
    spec = write_spec(
        {
            "sampler": "grid",
            "budget": {"n_trials": None},
            "search_space": {
                "latent_dim": 4,
                "beta": 1.0,
                "lr": {"low": 1.0e-3, "high": 1.0e8, "log": True, "grid": [1.0e8, 3.0e-3]},
            },
        }
    )
    result = cli("run", spec)
    assert result.exit_code == 0, result.output
    trials = {t.params["lr"]: t for t in _load(db_url).trials}
    assert trials[1e8].state == TrialState.PRUNED
    assert "non-finite" in trials[1e8].user_attrs["stop_reason"]
    assert trials[3e-3].state == TrialState.COMPLETE
    assert "non-finite" in result.output


@pytest.mark.integration
def test_running_twice_resumes_the_same_study(cli, write_spec, db_url):
    spec = write_spec({"budget": {"n_trials": 2}})
    assert cli("run", spec).exit_code == 0
    assert cli("run", spec, "--n-trials", "1").exit_code == 0
    assert optuna.get_all_study_names(db_url) == ["tiny"]
    assert len(_load(db_url).trials) == 3


@pytest.mark.integration
def test_cli_flags_override_the_spec(cli, write_spec, db_url):
    result = cli(
        "run",
        write_spec(),
        "--study-name",
        "other",
        "--n-trials",
        "1",
        "--epochs",
        "1",
        "--sampler",
        "tpe",
        "--seed",
        "7",
    )
    assert result.exit_code == 0, result.output
    study = _load(db_url, "other")
    assert len(study.trials) == 1
    assert study.user_attrs["spec"]["seed"] == 7
    assert study.user_attrs["spec"]["sampler"]["name"] == "tpe"
    assert list(study.trials[0].intermediate_values) == [1]


@pytest.mark.integration
@pytest.mark.parametrize("sampler", ["random", "tpe", "gp", "cmaes", "qmc"])
def test_every_sampler_runs(cli, write_spec, db_url, sampler):
    result = cli(
        "run",
        write_spec({"budget": {"n_trials": 2}, "training": {"epochs": 1}}),
        "--sampler",
        sampler,
    )
    assert result.exit_code == 0, result.output
    assert len(_load(db_url).get_trials(states=(TrialState.COMPLETE,))) == 2


@pytest.mark.integration
@pytest.mark.parametrize("pruner", PRUNERS)
def test_every_pruner_runs(cli, write_spec, db_url, pruner):
    result = cli("run", write_spec({"budget": {"n_trials": 2}}), "--pruner", pruner)
    assert result.exit_code == 0, result.output
    assert len(_load(db_url).trials) == 2


@pytest.mark.integration
def test_export_best_then_train_reproduces_it(cli, write_spec, db_url, tmp_path: Path):
    assert cli("run", write_spec({"budget": {"n_trials": 3}})).exit_code == 0
    best = _load(db_url).best_trial
    out = tmp_path / "best.yaml"
    result = cli("export-best", "--study-name", "tiny", "--storage", db_url, "--output", out)
    assert result.exit_code == 0, result.output
    exported = yaml.safe_load(out.read_text())
    assert exported["source"]["trial"] == best.number
    assert exported["source"]["value"] == pytest.approx(best.value)
    assert exported["source"]["params"] == best.params
    assert exported["model"]["latent_dim"] == best.params["latent_dim"]
    assert exported["lr"] == pytest.approx(best.params["lr"])
    assert exported["beta"] == pytest.approx(best.params["beta"])
    retrained = cli("train", out)
    assert retrained.exit_code == 0, retrained.output
    last_epoch = [ln for ln in retrained.output.splitlines() if ln.startswith("epoch")][-1]
    value = float(last_epoch.split("validation ELBO")[1].split()[0])
    assert value == pytest.approx(best.value, abs=0.01)
    assert "test ELBO" in retrained.output

    as_json = tmp_path / "best.json"
    assert (
        cli(
            "export-best", "--study-name", "tiny", "--storage", db_url, "--output", as_json
        ).exit_code
        == 0
    )
    assert json.loads(as_json.read_text())["source"]["trial"] == best.number


def test_export_best_without_complete_trial_exits_2(cli, db_url, tmp_path: Path):
    empty = optuna.create_study(study_name="empty", storage=db_url, direction="maximize")
    empty.set_user_attr("vae_tune_version", "0.1.0")  # a vae-tune study whose trials all failed
    out = tmp_path / "best.yaml"
    result = cli("export-best", "--study-name", "empty", "--storage", db_url, "--output", out)
    assert result.exit_code == 2
    assert "no complete trial" in result.output
    assert not out.exists()
    missing = cli("export-best", "--study-name", "nope", "--storage", db_url, "--output", out)
    assert missing.exit_code == 2 and "no study named" in missing.output


@pytest.mark.integration
def test_studies_command_and_optunas_own_cli_list_the_study(cli, write_spec, db_url):
    assert cli("run", write_spec({"budget": {"n_trials": 1}})).exit_code == 0
    listed = cli("studies", "--storage", db_url)
    assert listed.exit_code == 0 and "tiny" in listed.output
    optuna_cli = Path(sys.executable).with_name("optuna")
    out = subprocess.run(
        [str(optuna_cli), "studies", "--storage", db_url],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "tiny" in out.stdout


@pytest.mark.integration
def test_report_draws_plotly_html(cli, write_spec, db_url, tmp_path: Path):
    assert cli("run", write_spec({"budget": {"n_trials": 3}})).exit_code == 0
    out = tmp_path / "report.html"
    result = cli("report", "--study-name", "tiny", "--storage", db_url, "--output", out)
    assert result.exit_code == 0, result.output
    html = out.read_text()
    assert "plotly" in html.lower() and "Optimization history" in html


def test_passwords_are_masked(cli):
    from vae_tune.tuning.storage import mask_url

    url = "postgresql+psycopg://user:s3cret@127.0.0.1:1/db"
    assert "s3cret" not in mask_url(url) and "***" in mask_url(url)
    result = cli("studies", "--storage", url)
    assert result.exit_code != 0
    assert "s3cret" not in result.output


@pytest.mark.integration
def test_a_trial_is_never_pruned_at_its_last_epoch(cli, write_spec, db_url):
    """Its training is done by then: it completes and counts as complete (with one epoch, the
    median pruner would otherwise prune the bad learning rate after its whole budget)."""
    spec = write_spec(
        {
            "sampler": "grid",
            "budget": {"n_trials": None},
            "training": {"epochs": 1},
            "search_space": {
                "beta": 1.0,
                "latent_dim": 4,
                "lr": {"low": 1.0e-8, "high": 1.0e-2, "log": True, "grid": [1.0e-2, 1.0e-8]},
            },
            "pruner": {"name": "median", "options": {"n_startup_trials": 1, "n_warmup_steps": 0}},
        }
    )
    assert cli("run", spec).exit_code == 0
    trials = _load(db_url).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert trials[0].value != trials[1].value
