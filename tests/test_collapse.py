"""Collapse is judged by information: a unit is active only if its mean varies over the data
and it carries KL; a study whose best trial collapsed says so."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vae_tune.models.base import VAE
from vae_tune.models.likelihoods import Bernoulli
from vae_tune.training.trainer import evaluate


class _Fixed(VAE):
    """Unit 0: means spread with sd 0.15 and unit variance (almost no KL); unit 1: sd 1 and a
    narrow posterior (about 1 nat)."""

    latent_dim = 2

    def __init__(self):
        super().__init__()
        self.out = nn.Linear(2, 4)

    def encode_images(self, x):
        u = x.flatten(1)[:, :2] - 0.5
        mu = torch.stack([0.15 * u[:, 0] / u[:, 0].std(), u[:, 1] / u[:, 1].std()], 1)
        logvar = torch.stack([torch.zeros_like(mu[:, 0]), torch.full_like(mu[:, 1], -2.0)], 1)
        return mu, logvar

    def decode_latents(self, z):
        return self.out(z).view(-1, 2, 2)


def test_a_unit_that_varies_but_carries_no_information_is_not_active():
    x = torch.rand(4000, 2, 2, generator=torch.Generator().manual_seed(0))
    result = evaluate(_Fixed(), Bernoulli(), x, 1000, seed=0)
    kl0, kl1 = result.kl_per_dim
    assert kl0 < 0.1 < kl1  # unit 0 passes the covariance test alone (variance 0.0225)
    assert result.active_units == 1


@pytest.mark.integration
def test_the_summary_warns_when_the_best_trial_collapsed(cli, write_spec):
    spec = write_spec({"search_space": {"beta": 200.0}, "training": {"epochs": 3}})
    result = cli("run", spec, "--n-trials", "2")
    assert result.exit_code == 0, result.output
    assert "posterior collapsed" in result.output
    assert " 0 active COLLAPSED" in result.output
