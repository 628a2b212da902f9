"""Two stochastic layers: exact densities (the IW-NLL reaches a quadrature of log p(x)), and
a study records both layers' active units, the Monte-Carlo KL and the pictures."""

from __future__ import annotations

import math

import optuna
import pytest
import torch
from optuna.artifacts import get_all_artifact_meta

from vae_tune.models import build_model
from vae_tune.models.likelihoods import Bernoulli
from vae_tune.models.losses import log_normal, log_standard_normal
from vae_tune.training.diagnostics import iw_nll
from vae_tune.tuning.storage import open_storage

TWO_LAYERS = {"architecture": "hierarchical", "latent_dim": 1, "z2_dim": 1, "hidden_dim": 8,
              "z2_hidden_dim": 8, "depth": 1}  # fmt: skip


def _exact_nll(model, x: torch.Tensor) -> float:
    """-log p(x) = -log sum_(z1, z2) p(x|z1) p(z1|z2) p(z2) dz1 dz2 on a grid (1-D z1 and z2)."""
    grid = torch.linspace(-8, 8, 1201, dtype=torch.float64)[:, None]
    step = (grid[1, 0] - grid[0, 0]).item()
    logits = model.decode(grid)
    log_px = torch.stack([Bernoulli().log_prob(logits, xi.expand_as(logits)) for xi in x], 1)
    mu, logvar = model.p_z1(grid)  # p(z1|z2) for every z2 of the grid
    log_p_z1 = log_normal(grid.T, mu, logvar)  # z2 x z1
    log_joint = log_px[None] + (log_p_z1 + log_standard_normal(grid))[..., None]  # z2 x z1 x N
    log_marginal = torch.logsumexp(log_joint.flatten(0, 1), 0) + 2 * math.log(step)
    return -log_marginal.mean().item()


@pytest.mark.integration
@pytest.mark.parametrize("flow", ["none", "iaf"])
def test_iw_nll_of_two_stochastic_layers_converges_to_the_exact_likelihood(flow: str):
    torch.manual_seed(5)
    model = build_model({**TWO_LAYERS, "flow": flow}, (2, 3)).double()
    gen = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((6, 2, 3), 0.5, dtype=torch.float64), generator=gen)
    with torch.no_grad():
        exact = _exact_nll(model, x)
        nll = iw_nll(model, Bernoulli(), x, 100_000, seed=2, chunk=5000)
        elbo_nll = iw_nll(model, Bernoulli(), x, 1, seed=2)
    assert nll == pytest.approx(exact, abs=0.005)
    assert elbo_nll > exact + 0.01  # one sample: a looser bound, so the test has teeth


@pytest.mark.integration
def test_a_hierarchical_study_records_both_layers(cli, write_spec, db_url):
    spec = write_spec(
        {
            "budget": {"n_trials": 1},
            "training": {"iw_samples": 20, "epochs": 2},
            "search_space": {
                "architecture": "hierarchical",
                "latent_dim": 6,
                "hierarchical": {"hidden_dim": 32, "z2_dim": 3, "z2_hidden_dim": 16, "depth": 1},
            },
        }
    )
    result = cli("run", spec)
    assert result.exit_code == 0, result.output
    trial = optuna.load_study(study_name="tiny", storage=db_url).trials[0]
    attrs = trial.user_attrs
    assert attrs["kl_estimator"] == "monte carlo"
    assert len(attrs["kl_per_dim"]) == 6 + 3
    per_layer = attrs["active_units_per_layer"]
    assert len(per_layer) == 2 and sum(per_layer) == attrs["active_units"]
    assert per_layer[0] <= 6 and per_layer[1] <= 3
    assert per_layer[0] > 0  # digits need z1
    assert trial.value == pytest.approx(attrs["val_recon"] - attrs["val_kl"])
    assert attrs["val_iw_nll"] < -trial.value + 1.0
    metas = get_all_artifact_meta(trial, storage=open_storage(db_url))
    assert sorted(m.filename for m in metas) == ["reconstructions.png", "samples.png"]
