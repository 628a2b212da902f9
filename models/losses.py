"""The pieces of the ELBO every model shares: one implementation, no copy per model.

All terms are summed over data (pixels) or latent dimensions and returned per example,
so callers decide how to average; ELBO values are in nats per example.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reparameterize(
    mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw z ~ N(mu, exp(logvar)) as mu + sigma * eps, so gradients flow to mu and logvar."""
    eps = torch.randn(mu.shape, device=mu.device, dtype=mu.dtype, generator=generator)
    return mu + torch.exp(0.5 * logvar) * eps


def bernoulli_log_likelihood(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x|z) under independent Bernoullis with the given logits, summed per example.

    Grey-level targets in [0, 1] are allowed (the usual "grey-level Bernoulli" of BCE losses).
    """
    nll = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    return -nll.flatten(1).sum(1)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over latent dimensions, per example."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)


def gaussian_kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL per latent dimension, per example (B x latent_dim): for free bits and diagnostics."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)
