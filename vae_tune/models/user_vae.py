"""A user's module as a `VAE`: everything vae-tune adds (flows, labels, bounds, diagnostics,
pictures) comes from the base class; the user's `encode` and `decode` do the rest.

A conditional config adds, as for the shipped models, a learned per-class offset of the input
and of the Gaussian heads (both start at zero); the decoder side gets a per-class offset of z,
so the user's `decode` keeps its input width. The shapes `encode` and `decode` return are
checked once, on a batch of two, so a model that breaks the contract fails on its first trial
with a message naming the method and the shapes, not deep inside a loss.
"""

from __future__ import annotations

import torch
from torch import nn

from vae_tune.errors import SpecError
from vae_tune.models.base import VAE
from vae_tune.models.config import ModelConfig


class UserVAE(VAE):
    def __init__(
        self,
        net: type[nn.Module],
        config: ModelConfig,
        image_shape: tuple[int, int],
        classes: int = 0,
        name: str = "",
    ):
        super().__init__(config, image_shape, classes)
        self.latent_dim = config.latent_dim
        self.net = net(config, tuple(image_shape))
        if self.classes:
            self.label_latents = nn.Embedding(self.classes, self.latent_dim)
            nn.init.zeros_(self.label_latents.weight)
        self._check_shapes(name or net.__qualname__)

    def encode_images(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.net.encode(x)
        return mu, logvar

    def decode_latents(self, h: torch.Tensor) -> torch.Tensor:
        if self.classes:
            z, onehot = h.split([self.latent_dim, self.classes], dim=-1)
            h = z + onehot @ self.label_latents.weight
        return self.net.decode(h).reshape(-1, *self.image_shape)

    @torch.no_grad()
    def _check_shapes(self, name: str) -> None:
        was_training = self.net.training
        self.net.eval()
        try:
            x = torch.zeros(2, *self.image_shape)
            out = self.net.encode(x)
            if not (isinstance(out, tuple | list) and len(out) == 2):
                raise SpecError(f"{name}: encode(x) must return (mu, logvar)", "architecture")
            want = (2, self.latent_dim)
            for part, t in zip(("mu", "logvar"), out, strict=True):
                if not isinstance(t, torch.Tensor) or tuple(t.shape) != want:
                    got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                    raise SpecError(
                        f"{name}: encode(x) returned {part} of shape {got} for a batch of 2; "
                        f"expected {want} (batch x latent_dim)",
                        "architecture",
                    )
            y = self.net.decode(torch.zeros(want))
            size = self.image_shape[0] * self.image_shape[1]
            if not isinstance(y, torch.Tensor) or y.numel() != 2 * size:
                got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
                raise SpecError(
                    f"{name}: decode(z) returned {got} for 2 latent codes; expected 2 x "
                    f"{size} numbers (one per value of an example of shape {self.image_shape})",
                    "architecture",
                )
        finally:
            self.net.train(was_training)
