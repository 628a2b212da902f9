"""Decoder likelihoods p(x|z), fixed per study: ELBOs under different likelihoods do not compare.

Each returns log p(x|z) summed over pixels, per example, from the decoder's raw output.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import ContinuousBernoulli, Normal

from vae_tune.models.losses import bernoulli_log_likelihood

LIKELIHOODS = ("bernoulli", "continuous_bernoulli", "gaussian")


class Likelihood(nn.Module):
    def log_prob(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """The image to show for a decoder output (pixel means, clamped to [0, 1])."""
        return torch.sigmoid(out)


class Bernoulli(Likelihood):
    def log_prob(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return bernoulli_log_likelihood(out, x)


class ContinuousBernoulliLikelihood(Likelihood):
    """Loaiza-Ganem & Cunningham 2019: a proper density for grey levels in [0, 1]."""

    def log_prob(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        dist = ContinuousBernoulli(logits=out, validate_args=False)
        return dist.log_prob(x).flatten(1).sum(1)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return ContinuousBernoulli(logits=out, validate_args=False).mean


class Gaussian(Likelihood):
    """N(x; sigmoid(out), scale^2) per pixel; `scale=None` learns one log-scale."""

    def __init__(self, scale: float | None):
        super().__init__()
        if scale is None:
            self.log_scale = nn.Parameter(torch.zeros(()))
        else:
            self.register_buffer("log_scale", torch.tensor(float(scale)).log())

    def log_prob(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        dist = Normal(torch.sigmoid(out), self.log_scale.exp(), validate_args=False)
        return dist.log_prob(x).flatten(1).sum(1)


def build_likelihood(name: str, scale: float | None = None) -> Likelihood:
    if name == "bernoulli":
        return Bernoulli()
    if name == "continuous_bernoulli":
        return ContinuousBernoulliLikelihood()
    if name == "gaussian":
        return Gaussian(scale)
    raise ValueError(f"unknown likelihood {name!r}; known: {', '.join(LIKELIHOODS)}")
