"""Recurrent VAE: image rows as a sequence, read by a GRU/LSTM and written by another.

The decoder sees z at every step (not the previous row), so log p(x|z) factorizes per
pixel and the ELBO is exact in the same sense as for the other models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from models.base import VAE, gaussian_heads, split_heads

_CELLS = {"gru": nn.GRU, "lstm": nn.LSTM}


@dataclass(frozen=True)
class RNNConfig:
    latent_dim: int = 16
    hidden_size: int = 128
    cell: Literal["gru", "lstm"] = "gru"

    def __post_init__(self) -> None:
        if self.cell not in _CELLS:
            raise ValueError(f"cell must be one of {sorted(_CELLS)}, got {self.cell!r}")


class RNNVAE(VAE):
    def __init__(self, config: RNNConfig, image_shape: tuple[int, int]):
        super().__init__()
        self.image_shape = image_shape
        self.latent_dim = config.latent_dim
        rows, cols = image_shape
        cell = _CELLS[config.cell]
        self.encoder = cell(cols, config.hidden_size, batch_first=True)
        self.heads = gaussian_heads(config.hidden_size, config.latent_dim)
        self.decoder = cell(config.latent_dim, config.hidden_size, batch_first=True)
        self.out = nn.Linear(config.hidden_size, cols)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seq, _ = self.encoder(x)
        return split_heads(self.heads(seq[:, -1]))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        steps = z.unsqueeze(1).expand(-1, self.image_shape[0], -1)
        seq, _ = self.decoder(steps)
        return self.out(seq)
