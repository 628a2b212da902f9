"""Convolutional VAE: stride-2 convolutions down, transposed convolutions back up.

Works at any image size (8x8 digits, 28x28 MNIST): the decoder mirrors the encoder's
recorded spatial sizes, so the output always matches the input exactly.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from vae_tune.models.base import VAE, gaussian_heads, split_heads
from vae_tune.models.config import ModelConfig


class ConvConfig(ModelConfig):
    channels: int = Field(32, ge=1, description="channels of the first convolution (doubling)")
    depth: int = Field(2, ge=1, description="stride-2 convolutions")


def _down(size: int) -> int:
    return (size - 1) // 2 + 1  # kernel 3, stride 2, padding 1


class ConvEncoder(nn.Module):
    """Images -> (mu, logvar); remembers the spatial size after every layer for a decoder."""

    def __init__(self, image_shape, channels: int, depth: int, latent_dim: int, dropout: float):
        super().__init__()
        self.sizes = [tuple(image_shape)]
        self.chans = [1] + [channels * 2**i for i in range(depth)]
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Conv2d(self.chans[i], self.chans[i + 1], 3, 2, 1), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            h, w = self.sizes[-1]
            self.sizes.append((_down(h), _down(w)))
        self.body = nn.Sequential(*layers, nn.Flatten())
        self.flat = self.chans[-1] * self.sizes[-1][0] * self.sizes[-1][1]
        self.heads = gaussian_heads(self.flat, latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return split_heads(self.heads(self.body(x.unsqueeze(1))))


class ConvVAE(VAE):
    images_only = True  # it reads an example as an H x W image (refused on a table)

    def __init__(self, config: ConvConfig, image_shape: tuple[int, int], classes: int = 0):
        super().__init__(config, image_shape, classes)
        self.latent_dim = config.latent_dim
        enc = ConvEncoder(
            image_shape, config.channels, config.depth, config.latent_dim, config.dropout
        )
        self.encoder = enc
        sizes, chans = enc.sizes, enc.chans
        self.bottom = (chans[-1], *sizes[-1])
        self.project = nn.Sequential(nn.Linear(self.decoder_input_dim, enc.flat), nn.ReLU())
        dec: list[nn.Module] = []
        for i in reversed(range(config.depth)):
            (h_in, w_in), (h_out, w_out) = sizes[i + 1], sizes[i]
            pad = (h_out - (2 * h_in - 1), w_out - (2 * w_in - 1))
            out_ch = chans[i] if i else chans[1]
            dec += [
                nn.ConvTranspose2d(chans[i + 1], out_ch, 3, 2, 1, output_padding=pad),
                nn.ReLU(),
            ]
        dec.append(nn.Conv2d(chans[1], 1, 3, padding=1))  # logits, full resolution
        self.decoder = nn.Sequential(*dec)

    def encode_images(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x)

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        h = self.project(z).view(-1, *self.bottom)
        return self.decoder(h).squeeze(1)
