"""The pieces of the ELBO every model shares: one implementation, no copy per model.

All terms are summed over data (pixels) or latent dimensions and returned per example,
so callers decide how to average; ELBO values are in nats per example.
"""

from __future__ import annotations

import math

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


LOG_2PI = math.log(2 * math.pi)


def log_normal(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, exp(logvar)) per element (sum over the last dimension for a density)."""
    return -0.5 * ((z - mu).pow(2) * torch.exp(-logvar) + logvar + LOG_2PI)


def log_standard_normal(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, 1) per element."""
    return -0.5 * (z.pow(2) + LOG_2PI)


def gaussian_kl_between_per_dim(
    mu: torch.Tensor, logvar: torch.Tensor, prior_mu: torch.Tensor, prior_logvar: torch.Tensor
) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(prior_mu, exp(prior_logvar))) per dimension: the diagnostics
    of a stochastic layer whose prior is a learned Gaussian (the hierarchical model's z1)."""
    return 0.5 * (
        prior_logvar
        - logvar
        + (logvar.exp() + (mu - prior_mu).pow(2)) * torch.exp(-prior_logvar)
        - 1.0
    )


def tile(x: torch.Tensor, samples: int) -> torch.Tensor:
    """x repeated `samples` times along the batch, sample-major: the targets of S x B decodes."""
    return x.expand(samples, *x.shape).flatten(0, 1)


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """`t` in fp32 if autocast made it bf16/fp16 (densities and log-dets are never computed in
    half precision); fp32 and fp64 tensors are returned as they are."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()
