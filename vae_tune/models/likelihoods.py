"""Decoder likelihoods p(x|z), fixed per study: ELBOs under different likelihoods do not compare.

Each returns log p(x|z) summed over the values of an example (pixels or features), per
example, from the decoder's raw output (one number per value), and the mean of p(x|z) to show
or to return as a reconstruction.

- images in [0, 1]: `bernoulli` (logits; binary or grey-level targets), `continuous_bernoulli`,
  `gaussian` (mean sigmoid(out), one scale);
- tables of real features: `gaussian` with an unbounded mean and a learned scale per feature;
  a standardization fitted on the training split is kept here (`shift`, `spread`), so the
  model sees standardized values while every log-density, and so every ELBO and IW-NLL, is in
  nats of the data in its own units;
- counts: `poisson`, `negative_binomial` (the decoder gives the log-mean; a learned inverse
  dispersion per feature, as scVI's "gene" dispersion) and `zinb` (the same, zero-inflated
  with a learned dropout logit per feature);
- binary features: `bernoulli`.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import ContinuousBernoulli, Normal

from vae_tune.models.losses import bernoulli_log_likelihood

LIKELIHOODS = (
    "bernoulli",
    "continuous_bernoulli",
    "gaussian",
    "poisson",
    "negative_binomial",
    "zinb",
)
COUNTS = ("poisson", "negative_binomial", "zinb")
MAX_LOG_MEAN = 20.0  # exp(20) ~ 5e8 counts: a bound that keeps a diverging decoder finite


def _sum(values: torch.Tensor) -> torch.Tensor:
    return values.flatten(1).sum(1)


class Likelihood(nn.Module):
    def log_prob(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """The mean of p(x|z), in the units the model sees (images: clamped to [0, 1])."""
        return torch.sigmoid(out)

    def to_data(self, x: torch.Tensor) -> torch.Tensor:
        """Values in the units the model sees -> the data's own units (a standardized table's
        inverse transform; the identity elsewhere)."""
        return x

    def from_data(self, x: torch.Tensor) -> torch.Tensor:
        """The data's own units -> the units the model sees (the inverse of `to_data`)."""
        return x


class Bernoulli(Likelihood):
    def log_prob(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return bernoulli_log_likelihood(out, x)


class ContinuousBernoulliLikelihood(Likelihood):
    """Loaiza-Ganem & Cunningham 2019: a proper density for grey levels in [0, 1]."""

    def log_prob(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        dist = ContinuousBernoulli(logits=out, validate_args=False)
        return _sum(dist.log_prob(x))

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
        return _sum(dist.log_prob(x))


class FeatureGaussian(Likelihood):
    """N(x; out, scale_j^2) per feature j of a table, mean unbounded; `scale=None` learns a
    log-scale per feature. `shift` and `spread` undo the standardization (zeros and ones when
    the data is not standardized); log p is of the data in its own units."""

    def __init__(self, shape: tuple[int, ...], scale: float | None):
        super().__init__()
        if scale is None:
            self.log_scale = nn.Parameter(torch.zeros(shape))
        else:
            self.register_buffer("log_scale", torch.full(shape, float(scale)).log())
        self.register_buffer("shift", torch.zeros(shape))
        self.register_buffer("spread", torch.ones(shape))

    def log_prob(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        z = (x - out) * torch.exp(-self.log_scale)
        log_n = -0.5 * z.pow(2) - self.log_scale - 0.5 * math.log(2 * math.pi)
        return _sum(log_n) - self.spread.log().sum()  # the change of units, per example

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return out

    def to_data(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.spread + self.shift

    def from_data(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.spread


class Poisson(Likelihood):
    """Counts: Poisson with log-rate `out`."""

    def log_prob(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        log_mu = out.clamp(max=MAX_LOG_MEAN)
        return _sum(x * log_mu - log_mu.exp() - torch.lgamma(x + 1))

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return out.clamp(max=MAX_LOG_MEAN).exp()


def nb_log_prob(x: torch.Tensor, log_mu: torch.Tensor, log_theta: torch.Tensor) -> torch.Tensor:
    """log NB(x; mean mu, inverse dispersion theta), elementwise (scVI's parametrization)."""
    theta = log_theta.exp()
    log_theta_mu = torch.logaddexp(log_theta, log_mu)
    return (
        theta * (log_theta - log_theta_mu)
        + x * (log_mu - log_theta_mu)
        + torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1)
    )


class NegativeBinomial(Likelihood):
    """Counts: negative binomial with log-mean `out` and a learned inverse dispersion per
    feature (variance mu + mu^2 / theta)."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.log_theta = nn.Parameter(torch.zeros(shape))

    def log_prob(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return _sum(nb_log_prob(x, out.clamp(max=MAX_LOG_MEAN), self.log_theta))

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return out.clamp(max=MAX_LOG_MEAN).exp()


class ZeroInflatedNegativeBinomial(NegativeBinomial):
    """Counts with extra zeros: with probability pi_j (a learned logit per feature) a value is
    a structural zero, else NB (Lopez et al. 2018's ZINB, with per-feature dropout)."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__(shape)
        self.dropout_logit = nn.Parameter(torch.full(shape, -2.0))

    def log_prob(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        nb = nb_log_prob(x, out.clamp(max=MAX_LOG_MEAN), self.log_theta)
        log_pi = nn.functional.logsigmoid(self.dropout_logit)
        log_not_pi = nn.functional.logsigmoid(-self.dropout_logit)
        zero = torch.logaddexp(log_pi.expand_as(nb), log_not_pi + nb)
        return _sum(torch.where(x == 0, zero, log_not_pi + nb))

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(-self.dropout_logit) * super().mean(out)


def build_likelihood(
    name: str,
    scale: float | None = None,
    shape: tuple[int, ...] = (1, 1),
    vectors: bool = False,
) -> Likelihood:
    """The likelihood `name` for examples of `shape`; `vectors`: a table's features (a
    Gaussian's mean is then unbounded and its scale per feature) rather than an image."""
    shape = tuple(shape)
    if name == "bernoulli":
        return Bernoulli()
    if name == "continuous_bernoulli":
        return ContinuousBernoulliLikelihood()
    if name == "gaussian":
        return FeatureGaussian(shape, scale) if vectors else Gaussian(scale)
    if name == "poisson":
        return Poisson()
    if name == "negative_binomial":
        return NegativeBinomial(shape)
    if name == "zinb":
        return ZeroInflatedNegativeBinomial(shape)
    raise ValueError(f"unknown likelihood {name!r}; known: {', '.join(LIKELIHOODS)}")
