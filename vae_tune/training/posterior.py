"""What the approximate posterior q(z|x) of a trained model is worth, in nats per example:

- the mutual information I(x; z) between images and codes under q (Hoffman & Johnson 2016),
  near 0 when the posterior collapsed, whatever the ELBO says;
- the amortization gap (Cremer et al. 2018): how much ELBO the encoder leaves on the table
  against a q(z|x) optimized for each example with the decoder frozen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vae_tune.models import VAE
from vae_tune.models.likelihoods import Likelihood
from vae_tune.models.losses import gaussian_kl
from vae_tune.seeds import derive

LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class MutualInformation:
    mi: float  # I(x; z) = E_x KL(q(z|x) || p(z)) - KL(q(z) || p(z))
    kl: float  # E_x KL(q(z|x) || p(z)), the ELBO's KL term
    marginal_kl: float  # KL(q(z) || p(z)), q(z) the aggregate posterior of the examples
    examples: int
    bound: float  # log(examples): the estimate cannot exceed it


def _encode(
    model: VAE, x: torch.Tensor, batch_size: int, labels: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [
        model.encode(x[i : i + batch_size], None if labels is None else labels[i : i + batch_size])
        for i in range(0, len(x), batch_size)
    ]
    return torch.cat([p[0] for p in parts]).double(), torch.cat([p[1] for p in parts]).double()


@torch.no_grad()
def mutual_information(
    model: VAE,
    x: torch.Tensor,
    seed: int,
    samples: int = 4,
    batch_size: int = 1024,
    labels: torch.Tensor | None = None,
) -> MutualInformation:
    """Estimate I(x; z) over the examples `x` (Hoffman & Johnson 2016).

    KL(q(z)||p(z)) is estimated by Monte Carlo from `samples` draws z ~ q(z|x) per example,
    log q(z) as the log-mean-exp of log q(z|x_j) over the posteriors of all the examples (the
    aggregate posterior of this batch), in float64. The estimate is at most log(len(x)).
    A conditional model's q(z|x, y) reads the images' `labels`.
    """
    was_training = model.training
    model.eval()
    mu, logvar = _encode(model, x, batch_size, labels)
    var = logvar.exp()
    n, latent = mu.shape
    gen = torch.Generator(device=x.device).manual_seed(seed)
    eps = torch.randn(samples, n, latent, generator=gen, device=x.device, dtype=torch.float64)
    z = (mu + var.sqrt() * eps).flatten(0, 1)  # samples*n x L
    # log q(z|x_j) = -0.5 sum_l [(z_l - mu_jl)^2 / var_jl + logvar_jl + log 2pi], as products
    inv = 1 / var
    const = -0.5 * ((mu.pow(2) * inv).sum(1) + logvar.sum(1) + latent * LOG_2PI)  # n
    marginal = torch.zeros((), dtype=torch.float64, device=x.device)
    for start in range(0, len(z), 2048):
        zc = z[start : start + 2048]
        log_q = -0.5 * (zc.pow(2) @ inv.T) + zc @ (mu * inv).T + const  # chunk x n
        log_qz = torch.logsumexp(log_q, 1) - math.log(n)
        log_pz = -0.5 * (zc.pow(2).sum(1) + latent * LOG_2PI)
        marginal += (log_qz - log_pz).sum()
    marginal_kl = (marginal / len(z)).item()
    kl = gaussian_kl(mu, logvar).mean().item()
    model.train(was_training)
    return MutualInformation(kl - marginal_kl, kl, marginal_kl, n, math.log(n))


@dataclass(frozen=True)
class AmortizationGap:
    encoder_elbo: float  # ELBO of the encoder's q(z|x), nats per example
    optimized_elbo: float  # ELBO of q(z|x) optimized per example
    gap: float  # optimized - encoder: >= 0 up to the noise of the estimate
    gap_se: float  # standard error of the gap over the examples
    examples: int
    steps: int
    samples: int  # noise draws each ELBO is averaged over (the same for both)


def _elbo(model, likelihood, x, mu, logvar, eps, labels) -> torch.Tensor:
    """Per-example ELBO averaged over the noise `eps` (S x B x L), KL in closed form."""
    s = len(eps)
    z = (mu + (0.5 * logvar).exp() * eps).flatten(0, 1)
    y = None if labels is None else labels.repeat(s)  # sample-major, as z
    log_px = likelihood.log_prob(model.decode(z, y), x.repeat(s, *([1] * (x.dim() - 1))))
    return log_px.view(s, len(x)).mean(0) - gaussian_kl(mu, logvar)


def amortization_gap(
    model: VAE,
    likelihood: Likelihood,
    x: torch.Tensor,
    seed: int,
    steps: int = 300,
    lr: float = 1e-2,
    samples: int = 500,
    train_samples: int = 4,
    labels: torch.Tensor | None = None,
) -> AmortizationGap:
    """The encoder's ELBO against that of a q optimized per example: Adam on each example's
    mu and logvar, started at the encoder's output, the decoder frozen. Both ELBOs are averaged
    over the same `samples` noise draws (common random numbers), kept apart from the noise the
    optimization sees, so the gap is not fitted to the noise it is measured with."""
    was_training = model.training
    model.eval()
    frozen = [p for p in (*model.parameters(), *likelihood.parameters()) if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        with torch.no_grad():
            mu0, logvar0 = model.encode(x, labels)
        mu, logvar = mu0.clone().requires_grad_(), logvar0.clone().requires_grad_()
        optimizer = torch.optim.Adam([mu, logvar], lr=lr)
        gen = torch.Generator(device=x.device).manual_seed(derive(seed, "gap-steps"))
        shape = (train_samples, *mu.shape)
        for _ in range(steps):  # every example's mu, logvar only see their own example's loss
            eps = torch.randn(shape, generator=gen, device=x.device, dtype=mu.dtype)
            loss = -_elbo(model, likelihood, x, mu, logvar, eps, labels).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            per_example = []
            for m, lv in ((mu0, logvar0), (mu.detach(), logvar.detach())):
                elbo = torch.zeros(len(x), dtype=torch.float64, device=x.device)
                noise = torch.Generator(device=x.device).manual_seed(derive(seed, "gap-noise"))
                for done in range(0, samples, 100):  # the same draws for both
                    s = min(100, samples - done)
                    eps = torch.randn((s, *m.shape), generator=noise, device=x.device)
                    elbo += _elbo(model, likelihood, x, m, lv, eps, labels).double() * s
                per_example.append(elbo / samples)
    finally:
        for p in frozen:
            p.requires_grad_(True)
        model.train(was_training)
    encoder, optimized = per_example
    diff = optimized - encoder
    se = diff.std().item() / math.sqrt(len(x)) if len(x) > 1 else math.nan
    return AmortizationGap(
        encoder.mean().item(),
        optimized.mean().item(),
        diff.mean().item(),
        se,
        len(x),
        steps,
        samples,
    )
