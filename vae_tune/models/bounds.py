"""The bound the optimizer maximizes, from a model's posterior samples and log p(x|z).

One sample: the ELBO with the KL weighted by beta (and floored by free bits). k samples: the
importance-weighted bound of Burda et al. 2016 with beta-weighted importance weights,
log w_i = log p(x|z_i) + beta * (log p(z_i) - log q(z_i|x)); at beta = 1 it is the IWAE bound.
"""

from __future__ import annotations

import math

import torch

from vae_tune.models.base import Posterior


def kl_term(post: Posterior, free_bits: float) -> torch.Tensor:
    """The batch's mean KL, each unit's share kept at >= `free_bits` nats (Kingma et al. 2016).

    A closed-form KL splits by unit; a Monte-Carlo one (a flow, two stochastic layers) does not,
    so its units form one group whose floor is free_bits x units.
    """
    if not free_bits:
        return post.kl.mean()
    if post.exact:
        per_dim = torch.cat([layer.kl_per_dim() for layer in post.layers], -1)
        return per_dim.mean(0).clamp(min=free_bits).sum()
    units = sum(layer.mu.shape[-1] for layer in post.layers)
    return post.kl.mean().clamp(min=free_bits * units)


def training_bound(
    log_px: torch.Tensor, post: Posterior, weight: float, free_bits: float = 0.0
) -> torch.Tensor:
    """The batch mean of the bound to maximize; `log_px` is S x B (S = importance samples)."""
    samples = log_px.shape[0]
    if samples == 1:
        return log_px.mean() - weight * kl_term(post, free_bits)
    if free_bits:
        raise ValueError("free bits floor the single-sample ELBO's KL; k > 1 has no such term")
    log_w = log_px + weight * (post.log_p - post.log_q)
    return (torch.logsumexp(log_w, 0) - math.log(samples)).mean()
