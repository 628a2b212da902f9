"""Fully connected VAE: the pytorch/examples VAE, with width and depth as knobs."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from vae_tune.models.base import VAE, gaussian_heads, split_heads
from vae_tune.models.config import ModelConfig

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}
Activation = Literal["relu", "tanh"]


class MLPConfig(ModelConfig):
    latent_dim: int = Field(20, ge=1)
    hidden_dim: int = Field(400, ge=1, description="units per hidden layer")
    depth: int = Field(1, ge=1, description="hidden layers in the encoder and in the decoder")
    activation: Activation = "relu"  # tanh: Burda et al. 2016's MNIST models


def stack(
    in_dim: int, hidden_dim: int, depth: int, dropout: float, activation: Activation = "relu"
) -> nn.Sequential:
    """`depth` fully connected layers of `hidden_dim` units, each with its activation."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [
            nn.Linear(in_dim if i == 0 else hidden_dim, hidden_dim),
            ACTIVATIONS[activation](),
        ]
        if dropout:
            layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class MLPVAE(VAE):
    def __init__(self, config: MLPConfig, image_shape: tuple[int, int], classes: int = 0):
        super().__init__(config, image_shape, classes)
        self.latent_dim = config.latent_dim
        d = image_shape[0] * image_shape[1]
        width, depth, act = config.hidden_dim, config.depth, config.activation
        self.encoder = stack(d, width, depth, config.dropout, act)
        self.heads = gaussian_heads(config.hidden_dim, config.latent_dim)
        self.decoder = nn.Sequential(
            stack(self.decoder_input_dim, width, depth, config.dropout, act),
            nn.Linear(config.hidden_dim, d),
        )

    def encode_images(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return split_heads(self.heads(self.encoder(x.flatten(1))))

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).view(-1, *self.image_shape)
