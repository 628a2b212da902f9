"""The VAE contract every architecture fulfils: encode to (mu, logvar), decode z to logits."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from models.losses import reparameterize


class VAEOutput(NamedTuple):
    logits: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor


class VAE(nn.Module):
    """Base class: subclasses implement `encode` and `decode`; images are B x H x W in [0, 1]."""

    latent_dim: int

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> VAEOutput:
        mu, logvar = self.encode(x)
        z = reparameterize(mu, logvar, generator)
        return VAEOutput(self.decode(z), mu, logvar)


def gaussian_heads(in_features: int, latent_dim: int) -> nn.Linear:
    """One linear layer producing mu and logvar side by side (split with `split_heads`)."""
    return nn.Linear(in_features, 2 * latent_dim)


def split_heads(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mu, logvar = h.chunk(2, dim=-1)
    return mu, logvar
