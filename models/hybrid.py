"""Hybrid VAE: the convolutional encoder with the recurrent row decoder."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from models.base import VAE
from models.conv import ConvEncoder
from models.rnn import RowDecoder, check_cell


@dataclass(frozen=True)
class HybridConfig:
    latent_dim: int = 16
    channels: int = 32
    depth: int = 2
    hidden_size: int = 128
    cell: str = "gru"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        check_cell(self.cell)


class HybridVAE(VAE):
    def __init__(self, config: HybridConfig, image_shape: tuple[int, int]):
        super().__init__()
        self.image_shape = image_shape
        self.latent_dim = config.latent_dim
        self.encoder = ConvEncoder(
            image_shape, config.channels, config.depth, config.latent_dim, config.dropout
        )
        self.decoder = RowDecoder(config.latent_dim, config.hidden_size, config.cell, image_shape)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)
