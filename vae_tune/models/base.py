"""The VAE contract every architecture fulfils: encode x to the Gaussian (mu, logvar) of
q(z|x), decode z to logits.

A conditional VAE (`conditional: true`, Sohn et al. 2015) also sees a class label y: its
one-hot enters the decoder beside z, p(x|z, y), and the encoder, q(z|x, y), at both ends: a
learned per-class offset of the input image (for an MLP exactly what concatenating the one-hot
to its input computes) and of the Gaussian heads' output. Both offsets start at zero. The
prior stays N(0, I), so a class is drawn by decoding prior samples with its label.
Architectures only map images to heads and decoder inputs to logits (`encode_images`,
`decode_latents`); the label is handled here, once.

The densities a bound is made of, log q(z|x) (a flow's log-determinants included) and log p(z),
come from `posterior`, whose default here is the encoder's Gaussian pushed through the
configured flow, under a N(0, I) prior. A model with more stochastic layers overrides
`posterior` and `sample_prior` (models/hierarchical.py), so the trainer, the IW-NLL and the
pictures handle every model the same way.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from vae_tune.models.config import ModelConfig
from vae_tune.models.flows import Flow, build_flow
from vae_tune.models.losses import (
    at_least_fp32,
    gaussian_kl,
    gaussian_kl_between_per_dim,
    gaussian_kl_per_dim,
    log_normal,
    log_standard_normal,
    reparameterize,
)


class Layer(NamedTuple):
    """One stochastic layer's Gaussian before any flow, and its prior's (None: N(0, I)).
    Per-unit KL and active units are computed on it, flow or not."""

    mu: torch.Tensor
    logvar: torch.Tensor
    prior_mu: torch.Tensor | None = None
    prior_logvar: torch.Tensor | None = None

    def kl_per_dim(self) -> torch.Tensor:
        if self.prior_mu is None or self.prior_logvar is None:
            return gaussian_kl_per_dim(self.mu, self.logvar)
        return gaussian_kl_between_per_dim(self.mu, self.logvar, self.prior_mu, self.prior_logvar)


class Posterior(NamedTuple):
    """S samples of q(z|x) for a batch, with the densities every bound is made of (fp32)."""

    z: torch.Tensor  # S x B x L: what the decoder reads
    log_q: torch.Tensor  # S x B: log q(z|x)
    log_p: torch.Tensor  # S x B: log p(z)
    kl: torch.Tensor  # S x B: KL(q || p) in closed form where `exact`, else log q - log p
    layers: tuple[Layer, ...]  # the stochastic layers, bottom (z1) first
    exact: bool  # whether `kl` is the closed form (a Gaussian posterior, the N(0, I) prior)


class VAEOutput(NamedTuple):
    logits: torch.Tensor  # (S * B) x H x W, sample-major
    posterior: Posterior


class VAE(nn.Module):
    """Base class: subclasses implement `encode_images` and `decode_latents`, whose input is
    `decoder_input_dim` wide; images are B x H x W in [0, 1]. Subclasses pass their config and
    the dataset's number of classes to `__init__`, which builds the flow and the label inputs
    the config names."""

    latent_dim: int

    def __init__(
        self,
        config: ModelConfig | None = None,
        image_shape: tuple[int, int] = (1, 1),
        classes: int = 0,
    ):
        super().__init__()
        self.image_shape = tuple(image_shape)
        named = config is not None
        flow = (config.flow, config.flow_length, config.latent_dim) if named else ("none", 0, 0)
        self.flow: Flow = build_flow(*flow)
        conditional = named and config.conditional
        if conditional and classes < 2:
            raise ValueError("conditional: true needs a dataset with class labels (2 or more)")
        self.classes = classes if conditional else 0  # 0: unconditional
        latent = config.latent_dim if named else 0
        self.decoder_input_dim = latent + self.classes  # [z, one-hot y]
        if self.classes:  # zero-initialized: training starts from the unconditional model
            self.label_pixels = nn.Embedding(
                self.classes, self.image_shape[0] * self.image_shape[1]
            )
            self.label_heads = nn.Embedding(self.classes, 2 * latent)
            nn.init.zeros_(self.label_pixels.weight)
            nn.init.zeros_(self.label_heads.weight)

    @property
    def conditional(self) -> bool:
        return self.classes > 0

    def encode_images(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def decode_latents(self, h: torch.Tensor) -> torch.Tensor:
        """Logits from the decoder's input: z, or [z, one-hot y] for a conditional model."""
        raise NotImplementedError

    def labels(self, y: torch.Tensor | None) -> torch.Tensor | None:
        """`y` for a conditional model (required), None for another (ignored)."""
        if not self.classes:
            return None
        if y is None:
            raise ValueError("a conditional VAE needs the class labels of its inputs")
        return y

    def encode(
        self, x: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar) of q(z|x) (q(z|x, y) for a conditional model)."""
        y = self.labels(y)
        if y is None:
            return self.encode_images(x)
        mu, logvar = self.encode_images(x + self.label_pixels(y).view_as(x))
        shift_mu, shift_logvar = self.label_heads(y).chunk(2, dim=-1)
        return mu + shift_mu, logvar + shift_logvar

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of p(x|z) (p(x|z, y)); a conditional model's `y` has one label per row of z."""
        y = self.labels(y)
        if y is not None:
            z = torch.cat([z, nn.functional.one_hot(y, self.classes).to(z.dtype)], -1)
        return self.decode_latents(z)

    @property
    def closed_form_kl(self) -> bool:
        """Whether KL(q(z|x) || p(z)) has a closed form: a Gaussian posterior (no flow step)
        under the N(0, I) prior. Otherwise it is estimated from the samples (Monte Carlo)."""
        return len(self.flow) == 0

    @property
    def kl_estimator(self) -> str:
        return "closed form" if self.closed_form_kl else "monte carlo"

    def encoder_sample(
        self,
        x: torch.Tensor,
        samples: int,
        generator: torch.Generator | None,
        y: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, Layer]:
        """z ~ q(z|x) (S x B x L) and log q(z|x) = log N(z_0; mu, sigma^2) - sum log|det|."""
        mu, logvar = map(at_least_fp32, self.encode(x, y))
        shape = (samples, *mu.shape)
        z0 = reparameterize(mu.expand(shape), logvar.expand(shape), generator)
        z, log_det = self.flow(z0, torch.cat([mu, logvar], -1))
        return z, log_normal(z0, mu, logvar).sum(-1) - log_det, Layer(mu, logvar)

    def posterior(
        self,
        x: torch.Tensor,
        samples: int = 1,
        generator: torch.Generator | None = None,
        y: torch.Tensor | None = None,
    ) -> Posterior:
        z, log_q, layer = self.encoder_sample(x, samples, generator, y)
        log_p = log_standard_normal(z).sum(-1)
        exact = self.closed_form_kl
        kl = gaussian_kl(layer.mu, layer.logvar).expand_as(log_q) if exact else log_q - log_p
        return Posterior(z, log_q, log_p, kl, (layer,), exact)

    def sample_prior(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n draws of the z the decoder reads, from the prior, on the generator's device."""
        return torch.randn(n, self.latent_dim, device=generator.device, generator=generator)

    def code(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The z a reconstruction is shown for: the encoder's mean through the flow, no noise."""
        mu, logvar = map(at_least_fp32, self.encode(x, y))
        return self.flow(mu, torch.cat([mu, logvar], -1))[0]

    def forward(
        self,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        samples: int = 1,
        y: torch.Tensor | None = None,
    ) -> VAEOutput:
        """Logits of S posterior samples per image (sample-major) and the posterior; `y`, the
        images' labels, for a conditional model."""
        post = self.posterior(x, samples, generator, y)
        y = self.labels(y)
        tiled = None if y is None else y.repeat(samples)  # sample-major, as z is flattened
        return VAEOutput(self.decode(post.z.flatten(0, 1), tiled), post)


def gaussian_heads(in_features: int, latent_dim: int) -> nn.Linear:
    """One linear layer producing mu and logvar side by side (split with `split_heads`)."""
    return nn.Linear(in_features, 2 * latent_dim)


def split_heads(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mu, logvar = h.chunk(2, dim=-1)
    return mu, logvar
