"""Hybrid VAE: the convolutional encoder with the recurrent row decoder."""

from __future__ import annotations

import torch
from pydantic import Field

from vae_tune.models.base import VAE
from vae_tune.models.config import ModelConfig
from vae_tune.models.conv import ConvEncoder
from vae_tune.models.rnn import Cell, RowDecoder


class HybridConfig(ModelConfig):
    channels: int = Field(32, ge=1, description="channels of the first convolution (doubling)")
    depth: int = Field(2, ge=1, description="stride-2 convolutions")
    hidden_size: int = Field(128, ge=1, description="recurrent decoder state size")
    cell: Cell = "gru"


class HybridVAE(VAE):
    images_only = True  # it reads an example as an H x W image (refused on a table)

    def __init__(self, config: HybridConfig, image_shape: tuple[int, int], classes: int = 0):
        super().__init__(config, image_shape, classes)
        self.latent_dim = config.latent_dim
        self.encoder = ConvEncoder(
            image_shape, config.channels, config.depth, config.latent_dim, config.dropout
        )
        self.decoder = RowDecoder(
            self.decoder_input_dim, config.hidden_size, config.cell, image_shape
        )

    def encode_images(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x)

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)
