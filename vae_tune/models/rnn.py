"""Recurrent VAE: image rows as a sequence, read by a GRU/LSTM and written by another.

The decoder sees z at every step (not the previous row), so log p(x|z) factorizes per
pixel and the ELBO is exact in the same sense as for the other models.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from vae_tune.models.base import VAE, gaussian_heads, split_heads
from vae_tune.models.config import ModelConfig

CELLS = {"gru": nn.GRU, "lstm": nn.LSTM}
Cell = Literal["gru", "lstm"]


class RNNConfig(ModelConfig):
    hidden_size: int = Field(128, ge=1, description="recurrent state size")
    cell: Cell = "gru"


class RowDecoder(nn.Module):
    """z -> logits, one image row per recurrent step (z fed at every step)."""

    def __init__(self, input_dim: int, hidden_size: int, cell: str, image_shape):
        super().__init__()
        self.rows = image_shape[0]
        self.rnn = CELLS[cell](input_dim, hidden_size, batch_first=True)
        self.out = nn.Linear(hidden_size, image_shape[1])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        seq, _ = self.rnn(z.unsqueeze(1).expand(-1, self.rows, -1))
        return self.out(seq)


class RNNVAE(VAE):
    images_only = True  # it reads an example as an H x W image (refused on a table)

    def __init__(self, config: RNNConfig, image_shape: tuple[int, int], classes: int = 0):
        super().__init__(config, image_shape, classes)
        self.latent_dim = config.latent_dim
        self.encoder = CELLS[config.cell](image_shape[1], config.hidden_size, batch_first=True)
        self.dropout = nn.Dropout(config.dropout)
        self.heads = gaussian_heads(config.hidden_size, config.latent_dim)
        self.decoder = RowDecoder(
            self.decoder_input_dim, config.hidden_size, config.cell, image_shape
        )

    def encode_images(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seq, _ = self.encoder(x)
        return split_heads(self.heads(self.dropout(seq[:, -1])))

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)
