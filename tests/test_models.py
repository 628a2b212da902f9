"""The zoo builds from plain configs at every image size, and the shared ELBO terms are right."""

from __future__ import annotations

import math

import pytest
import torch

from vae_tune.errors import SpecError
from vae_tune.models import architectures, build_model
from vae_tune.models.losses import bernoulli_log_likelihood, gaussian_kl, reparameterize


@pytest.mark.parametrize("arch", architectures())
@pytest.mark.parametrize("shape", [(8, 8), (28, 28), (7, 12)])
def test_every_architecture_reconstructs_input_shape(arch, shape):
    model = build_model({"architecture": arch, "latent_dim": 3}, shape)
    out = model(torch.rand(5, *shape))
    assert out.logits.shape == (5, *shape)
    bottom = out.posterior.layers[0]
    assert bottom.mu.shape == bottom.logvar.shape == (5, 3)
    assert out.posterior.log_q.shape == out.posterior.kl.shape == (1, 5)
    k = model(torch.rand(5, *shape), samples=4)  # importance samples, sample-major
    assert k.logits.shape == (20, *shape) and k.posterior.z.shape == (4, 5, 3)


def test_unknown_architecture_or_knob_is_rejected():
    with pytest.raises(SpecError, match="unknown architecture"):
        build_model({"architecture": "gan"}, (8, 8))
    with pytest.raises(ValueError, match="width"):
        build_model({"architecture": "mlp", "width": 3}, (8, 8))


def test_kl_is_zero_at_the_prior_and_matches_closed_form():
    mu, logvar = torch.zeros(2, 4), torch.zeros(2, 4)
    assert torch.allclose(gaussian_kl(mu, logvar), torch.zeros(2))
    mu, logvar = torch.tensor([[1.0]]), torch.tensor([[math.log(4.0)]])
    expected = 0.5 * (1.0 + 4.0 - 1.0 - math.log(4.0))
    assert gaussian_kl(mu, logvar).item() == pytest.approx(expected)


def test_bernoulli_log_likelihood_sums_pixels():
    x = torch.tensor([[[1.0, 0.0]]])
    logits = torch.zeros_like(x)  # p = 0.5 everywhere
    assert bernoulli_log_likelihood(logits, x).item() == pytest.approx(2 * math.log(0.5))


def test_reparameterize_has_the_requested_moments():
    gen = torch.Generator().manual_seed(0)
    mu, logvar = torch.full((20000, 1), 2.0), torch.full((20000, 1), math.log(9.0))
    z = reparameterize(mu, logvar, gen)
    assert z.mean().item() == pytest.approx(2.0, abs=0.1)
    assert z.std().item() == pytest.approx(3.0, abs=0.1)
