"""Bad specs exit with code 2, name the field, and leave no database behind."""

from __future__ import annotations

from pathlib import Path

import pytest

BAD_SPECS = [
    ({"search_space": {"beta": {"low": 4.0, "high": 1.0}}}, "search_space.beta.low"),
    ({"search_space": {"lr": {"low": 0.0, "high": 0.1, "log": True}}}, "search_space.lr.low"),
    ({"search_space": {"latent_dim": {"low": 0, "high": 4}}}, "search_space.latent_dim.low"),
    ({"search_space": {"momentum": 0.1}}, "search_space.momentum"),
    (
        {"search_space": {"likelihood": {"choices": ["bernoulli", "gaussian"]}}},
        "search_space.likelihood",
    ),
    ({"likelihood": {"name": "gaussian", "binarize": "dynamic"}}, "likelihood.binarize"),
    ({"search_space": {"dropout": {"low": 0.0, "high": 1.5}}}, "search_space.dropout.high"),
    ({"search_space": {"optimizer": {"choices": ["adam", "sgd"]}}}, "search_space.optimizer"),
    ({"typo_key": 1}, "typo_key"),
    ({"training": {"epochs": "many"}}, "training.epochs"),
    ({"training": {"device": "tpu"}}, "training.device"),
    ({"sampler": {"name": "annealing"}}, "sampler.name"),
    ({"pruner": {"name": "sometimes"}}, "pruner.name"),
    ({"search_space": {"architecture": {"choices": ["mlp", "gan"]}}}, "search_space.architecture"),
    ({"search_space": {"mlp": {"width": 3}}}, "search_space.mlp.width"),
    ({"search_space": {"rnn": {"cell": {"choices": ["gru", 3]}}}}, "search_space.rnn.cell"),
    ({"sampler": {"name": "tpe", "options": {"n_startup": 3}}}, "sampler.options"),
    ({"pruner": {"name": "median", "options": {"warmup": 1}}}, "pruner.options"),
    ({"dataset": {"name": "imagenet"}}, "dataset.name"),
    ({"search_space": {"flow": {"choices": ["none", "glow"]}}}, "search_space.flow"),
    ({"search_space": {"flow_length": {"low": -1, "high": 4}}}, "search_space.flow_length.low"),
    ({"search_space": {"objective_k": 0}}, "search_space.objective_k"),
    ({"search_space": {"kl_schedule": "sigmoid"}}, "search_space.kl_schedule"),
    ({"search_space": {"kl_ratio": {"low": 0.0, "high": 0.5}}}, "search_space.kl_ratio.low"),
    ({"search_space": {"hierarchical": {"z3_dim": 3}}}, "search_space.hierarchical.z3_dim"),
    (
        {
            "search_space": {
                "free_bits": {"low": 0.0, "high": 0.5},
                "objective_k": {"choices": [1, 5]},
            }
        },
        "search_space.free_bits",
    ),
    ({"budget": {"n_trials": 0}}, "budget.n_trials"),
    ({"budget": {"seconds": -5}}, "budget.seconds"),
    ({"budget": {"trial_seconds": "long"}}, "budget.trial_seconds"),
    ({"budget": {"trial_seconds": 0}}, "budget.trial_seconds"),
    ({"pruner": {"name": "median", "fidelity": "seconds"}}, "pruner.fidelity"),
    ({"pruner": {"name": "curve", "fidelity": "minutes"}}, "pruner.fidelity"),
    ({"sampler": {"name": "tpe", "cost_aware": "sometimes"}}, "sampler.cost_aware"),
    ({"search_space": {"beta": {"low": 0.5, "high": 2.0, "grid": [5.0]}}}, "search_space.beta"),
    (
        {"sampler": "grid", "search_space": {"latent_dim": {"low": 2, "high": 8, "grid": None}}},
        "search_space.latent_dim.grid",
    ),
]


@pytest.mark.integration
@pytest.mark.parametrize(("changes", "field"), BAD_SPECS, ids=[f for _, f in BAD_SPECS])
def test_bad_spec_exits_2_naming_field_and_writes_nothing(
    cli, write_spec, tmp_path, changes, field
):
    result = cli("run", write_spec(changes))
    assert result.exit_code == 2, result.output
    assert field in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "study.db").exists()


def test_bad_cli_override_is_rejected_like_a_bad_spec(cli, write_spec, tmp_path):
    result = cli("run", write_spec(), "--sampler", "annealing")
    assert result.exit_code == 2
    assert "sampler.name" in result.output
    assert not (tmp_path / "study.db").exists()


def test_missing_spec_file_names_the_shipped_specs(cli, tmp_path: Path):
    result = cli("run", tmp_path / "nope.yaml")
    assert result.exit_code == 2
    assert "quickstart" in result.output


def test_invalid_yaml_is_a_clear_error(cli, tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("study_name: [unclosed\n")
    result = cli("run", bad)
    assert result.exit_code == 2
    assert "not valid YAML" in result.output


def test_shipped_specs_validate_and_enumerate_a_grid():
    from vae_tune.tuning.search_space import grid_points
    from vae_tune.tuning.spec import load_spec, shipped_specs

    assert "quickstart" in shipped_specs()
    for name in shipped_specs():
        spec = load_spec(name, {"sampler": "grid"})
        assert len(grid_points(spec.search_space)) >= 1


def test_free_bits_with_the_importance_weighted_bound_is_refused_in_a_run_config(cli, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("free_bits: 0.5\nobjective_k: 5\nepochs: 1\n")
    result = cli("train", config)
    assert result.exit_code == 2, result.output
    assert "free_bits: free bits (0.5) floor the single-sample ELBO's KL term" in result.output
