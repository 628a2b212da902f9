"""The training remedies as knobs: the IWAE bound (objective_k), KL schedules, Burda's learning
rate schedule. Each changes the training, never the meaning of the validation ELBO, works
under bf16 autocast, and survives export-best -> train."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
import yaml

from vae_tune.models import build_model
from vae_tune.training.config import DatasetSpec, RunConfig, TrainingKnobs
from vae_tune.training.kl_schedule import kl_weight
from vae_tune.training.trainer import iwae_lr_factor, train

TINY = DatasetSpec(name="digits", subset=200)  # batch 64: 4 steps an epoch


def _config(**kw: Any) -> RunConfig:
    base = dict(
        dataset=TINY,
        model={"architecture": "mlp", "latent_dim": 4, "hidden_dim": 32},
        epochs=2,
        device="cpu",
        threads=1,
    )
    return RunConfig(**{**base, **kw})


def _weights(epochs: int = 2, **knobs: Any) -> list[float]:
    k = TrainingKnobs(beta=2.0, **knobs)
    return [kl_weight(k, step, 4, epochs) for step in range(1, 4 * epochs + 1)]


def test_kl_schedules_step_by_step():
    assert _weights() == [2.0] * 8  # linear without warm-up epochs: beta throughout
    assert _weights(warmup_epochs=1) == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0, 2.0, 2.0]
    assert _weights(kl_schedule="none", warmup_epochs=1) == [2.0] * 8
    # Fu et al. 2019: M cycles over the run; beta rises over the first R of each, then stays
    cyclical = _weights(kl_schedule="cyclical", kl_cycles=2, kl_ratio=0.5)
    assert cyclical == [0.0, 1.0, 2.0, 2.0, 0.0, 1.0, 2.0, 2.0]
    assert _weights(kl_schedule="cyclical", kl_cycles=1, kl_ratio=1.0) == [
        2.0 * i / 8 for i in range(8)
    ]
    assert _weights(4, kl_schedule="cyclical", kl_cycles=4, kl_ratio=0.25)[:8] == [
        0.0, 2.0, 2.0, 2.0, 0.0, 2.0, 2.0, 2.0,
    ]  # fmt: skip


def test_burdas_learning_rate_schedule():
    factors = [iwae_lr_factor(e) for e in range(3290)]
    stages = [0] + [1] * 3 + [2] * 9 + [3] * 27 + [4] * 81 + [5] * 243 + [6] * 729 + [7] * 2187
    assert factors[:3280] == [10 ** (-i / 7) for i in stages]  # 3^i epochs at 10^(-i/7)
    assert factors[3280:] == [10**-1] * 10
    assert train(_config(lr_schedule="iwae", epochs=2)).final.val.elbo < 0


@pytest.mark.parametrize(
    ("base", "knob"),
    [
        ({}, {"objective_k": 5}),
        ({}, {"kl_schedule": "cyclical"}),
        ({"kl_schedule": "cyclical", "kl_cycles": 1}, {"kl_cycles": 2}),
        ({"kl_schedule": "cyclical", "kl_cycles": 1}, {"kl_ratio": 1.0}),
        ({"warmup_epochs": 2}, {"kl_schedule": "none"}),
    ],
    ids=["objective_k", "cyclical", "kl_cycles", "kl_ratio", "none"],
)
def test_each_knob_changes_the_training_loss_not_the_reported_elbo(base, knob):
    """With a vanishing lr the weights stay put: only the training objective differs, and the
    validation ELBO (one sample, beta = 1) is the same number."""
    reference = train(_config(lr=1e-12, beta=20.0, **base)).history
    other = train(_config(lr=1e-12, beta=20.0, **{**base, **knob})).history
    assert abs(sum(h.train_loss for h in other) - sum(h.train_loss for h in reference)) > 0.2
    assert other[-1].val.elbo == pytest.approx(reference[-1].val.elbo, abs=1e-4)


def test_the_importance_weighted_bound_is_tighter_than_the_elbo():
    elbo = train(_config(lr=1e-12, epochs=1)).final.train_loss  # minus the bound, per image
    iwae = train(_config(lr=1e-12, epochs=1, objective_k=50)).final.train_loss
    assert iwae < elbo - 0.1
    trained = train(_config(objective_k=8, epochs=3, lr=3e-3)).final
    assert trained.val.elbo > train(_config(lr=1e-12, epochs=1)).final.val.elbo + 5


def test_bf16_autocast_keeps_densities_and_log_dets_in_fp32():
    config = {
        "architecture": "hierarchical",
        "latent_dim": 4,
        "z2_dim": 2,
        "hidden_dim": 16,
        "z2_hidden_dim": 8,
        "flow": "iaf",
    }
    model = build_model(config, (8, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.encode(torch.rand(3, 8, 8))[0].dtype == torch.bfloat16  # autocast is on
        post = model.posterior(torch.rand(3, 8, 8), 2)
    for t in (post.z, post.log_q, post.log_p, post.kl):
        assert t.dtype == torch.float32
    run = train(_config(model=config, precision="bf16", objective_k=2, kl_schedule="cyclical"))
    assert run.precision in ("bf16", "bf16-matmul")  # the CPU mode the probe found faster
    assert torch.isfinite(torch.tensor(run.final.val.elbo))


REMEDIES = {
    "architecture": "hierarchical",
    "latent_dim": 4,
    "flow": "iaf",
    "flow_length": 2,
    "objective_k": 3,
    "kl_schedule": "cyclical",
    "kl_cycles": 2,
    "kl_ratio": 0.25,
    "lr_schedule": "iwae",
}
HIERARCHICAL = {"hidden_dim": 24, "z2_dim": 2, "z2_hidden_dim": 12, "depth": 1}


@pytest.mark.integration
def test_export_best_then_train_keeps_every_remedy(cli, write_spec, db_url, tmp_path: Path):
    spec = write_spec(
        {
            "budget": {"n_trials": 1},
            "training": {"iw_samples": 0, "pictures": False},
            "search_space": {**REMEDIES, "hierarchical": HIERARCHICAL},
        }
    )
    assert cli("run", spec).exit_code == 0
    best = optuna.load_study(study_name="tiny", storage=db_url).best_trial
    assert best.user_attrs["kl_estimator"] == "monte carlo"
    out = tmp_path / "best.yaml"
    assert (
        cli("export-best", "--study-name", "tiny", "--storage", db_url, "--output", out).exit_code
        == 0
    )
    exported = yaml.safe_load(out.read_text())
    for knob, value in REMEDIES.items():
        assert exported["model"].get(knob, exported.get(knob)) == value, knob
    assert {k: exported["model"][k] for k in HIERARCHICAL} == HIERARCHICAL
    retrained = cli("train", out)
    assert retrained.exit_code == 0, retrained.output
    last_epoch = [ln for ln in retrained.output.splitlines() if ln.startswith("epoch")][-1]
    assert float(last_epoch.split("validation ELBO")[1].split()[0]) == pytest.approx(
        best.value, abs=0.01
    )


NEW_KNOBS = ("objective_k", "kl_schedule", "kl_cycles", "kl_ratio")
NEW_MODEL_KNOBS = ("flow", "flow_length", "activation")


@pytest.mark.integration
def test_configs_exported_before_the_remedies_still_train_and_warm_start(
    cli, write_spec, db_url, tmp_path: Path
):
    """Knobs a config predates take their defaults: the same model, the same run."""
    assert (
        cli("run", write_spec({"budget": {"n_trials": 1}, "training": {"epochs": 1}})).exit_code
        == 0
    )
    best = tmp_path / "best.yaml"
    assert (
        cli("export-best", "--study-name", "tiny", "--storage", db_url, "--output", best).exit_code
        == 0
    )
    old = yaml.safe_load(best.read_text())
    for knob in NEW_KNOBS:
        del old[knob]
    for knob in NEW_MODEL_KNOBS:
        old["model"].pop(knob, None)
    old["lr_schedule"] = "none"
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old))
    retrained = cli("train", tmp_path / "old.yaml")
    assert retrained.exit_code == 0, retrained.output
    last_epoch = [ln for ln in retrained.output.splitlines() if ln.startswith("epoch")][-1]
    value = float(last_epoch.split("validation ELBO")[1].split()[0])
    assert value == pytest.approx(old["source"]["value"], abs=0.01)

    again = write_spec({"study_name": "again", "budget": {"n_trials": 1}}, "again.yaml")
    result = cli("run", again, "--enqueue", tmp_path / "old.yaml", "--epochs", "1")
    assert result.exit_code == 0, result.output
    assert "warm start: queued" in result.output
