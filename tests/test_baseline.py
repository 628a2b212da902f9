"""The baseline: a new study's first trial is the knobs' defaults moved into its space, run
once, named in the run's summary; `sampler.baseline: false` and the grid sampler go without."""

from __future__ import annotations

import optuna
import pytest

from vae_tune.tuning.spec import Param, SearchSpace
from vae_tune.tuning.warm_start import baseline_point


def _trials(db_url: str, name: str = "tiny") -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=db_url)
    return sorted(study.trials, key=lambda t: t.number)


@pytest.mark.parametrize(
    ("param", "value", "nearest"),
    [
        ({"low": 2.0, "high": 4.0}, 1.0, 2.0),  # below the range: its low end
        ({"low": 1e-4, "high": 3e-3, "log": True}, 1e-3, 1e-3),  # inside: itself
        ({"low": 2, "high": 8}, 20, 8),  # int above the range: its high end
        ({"low": 32, "high": 512, "step": 96}, 400, 416),  # onto the step from low
        ({"low": 32, "high": 400, "step": 96}, 400, 320),  # the step's last value in range
        ({"choices": [128, 256]}, 64, None),  # a categorical without it: the sampler's
        ({"choices": [64, 128]}, 64, 64),
        ({"value": 0.5}, 1.0, 0.5),
    ],
)
def test_nearest_value_of_a_parameter(param, value, nearest):
    assert Param.model_validate(param).nearest(value) == nearest


def test_baseline_point_is_the_defaults_moved_into_the_space():
    space = SearchSpace.model_validate(
        {
            "architecture": {"choices": ["conv", "mlp"]},
            "beta": {"low": 2.0, "high": 4.0},
            "lr": {"low": 1e-4, "high": 3e-3, "log": True},
            "batch_size": {"choices": [128, 256]},
            "latent_dim": {"low": 2, "high": 8},
            "mlp": {"hidden_dim": {"low": 32, "high": 128, "step": 32}},
        }
    )
    # mlp (the run config's default architecture) is a choice; batch 64 is not, so unset
    assert baseline_point(space) == {
        "architecture": "mlp",
        "latent_dim": 8,
        "beta": 2.0,
        "lr": 1e-3,
        "mlp_hidden_dim": 128,
    }
    conv_only = SearchSpace.model_validate({"architecture": {"choices": ["conv", "rnn"]}})
    assert baseline_point(conv_only) == {"architecture": "conv"}


@pytest.mark.integration
def test_a_new_study_runs_the_baseline_first_and_once(cli, write_spec, db_url):
    spec = write_spec({"budget": {"n_trials": 3}})
    result = cli("run", spec, "--workers", "1")
    assert result.exit_code == 0, result.output
    assert "baseline: queued the knobs' defaults before any sampled trial" in result.output
    first, *rest = _trials(db_url)
    # TINY_SPEC: latent_dim in [2, 8] (default 20), beta in [0.5, 2] (1), lr in [1e-3, 1e-2]
    assert first.params == {"latent_dim": 8, "beta": 1.0, "lr": 1e-3}
    assert first.user_attrs["queued"] == "baseline"
    assert not any("queued" in t.user_attrs for t in rest)
    assert f"Baseline (the knobs' defaults): trial 0, validation ELBO {first.value:.3f}" in (
        result.output
    )
    # a rerun of the same study adds sampled trials only
    result = cli("run", spec, "--workers", "1", "--n-trials", "2")
    assert result.exit_code == 0, result.output
    assert "baseline: queued" not in result.output
    trials = _trials(db_url)
    assert len(trials) == 5
    assert sum(t.user_attrs.get("queued") == "baseline" for t in trials) == 1


@pytest.mark.integration
@pytest.mark.parametrize("sampler", [{"baseline": False}, {"name": "grid"}])
def test_no_baseline_when_switched_off_or_on_a_grid(cli, write_spec, db_url, sampler):
    result = cli("run", write_spec({"sampler": sampler, "budget": {"n_trials": 2}}))
    assert result.exit_code == 0, result.output
    assert "baseline: queued" not in result.output
    assert "Baseline (the knobs' defaults)" not in result.output
    assert not any("queued" in t.user_attrs for t in _trials(db_url))
