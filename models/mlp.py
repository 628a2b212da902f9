"""Fully connected VAE: the pytorch/examples VAE, with width and depth as knobs."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from models.base import VAE, gaussian_heads, split_heads
from models.config import ModelConfig


class MLPConfig(ModelConfig):
    latent_dim: int = Field(20, ge=1)
    hidden_dim: int = Field(400, ge=1, description="units per hidden layer")
    depth: int = Field(1, ge=1, description="hidden layers in the encoder and in the decoder")


def _stack(in_dim: int, hidden_dim: int, depth: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(in_dim if i == 0 else hidden_dim, hidden_dim), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class MLPVAE(VAE):
    def __init__(self, config: MLPConfig, image_shape: tuple[int, int]):
        super().__init__()
        self.image_shape = image_shape
        self.latent_dim = config.latent_dim
        d = image_shape[0] * image_shape[1]
        self.encoder = _stack(d, config.hidden_dim, config.depth, config.dropout)
        self.heads = gaussian_heads(config.hidden_dim, config.latent_dim)
        self.decoder = nn.Sequential(
            _stack(config.latent_dim, config.hidden_dim, config.depth, config.dropout),
            nn.Linear(config.hidden_dim, d),
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return split_heads(self.heads(self.encoder(x.flatten(1))))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).view(-1, *self.image_shape)
