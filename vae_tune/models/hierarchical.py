"""Two stochastic layers, Burda et al. 2016's two-layer MLP: x -> h -> z1 -> h -> z2 to encode,
z2 -> h -> z1 -> h -> x to decode, with p(z1|z2) a learned Gaussian and p(z2) = N(0, I).

q(z1, z2|x) = q(z1|x) q(z2|z1); a configured flow acts on q(z1|x). The KL has no closed form
here: it is estimated from the samples, log q(z1, z2|x) - log p(z1, z2).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from vae_tune.models.base import VAE, Layer, Posterior, gaussian_heads, split_heads
from vae_tune.models.config import ModelConfig
from vae_tune.models.losses import at_least_fp32, log_normal, log_standard_normal, reparameterize
from vae_tune.models.mlp import Activation, stack


class HierarchicalConfig(ModelConfig):
    latent_dim: int = Field(100, ge=1, description="size of z1, the layer the decoder reads")
    hidden_dim: int = Field(200, ge=1, description="units of the layers between x and z1")
    z2_dim: int = Field(50, ge=1, description="size of z2, the top layer (prior N(0, I))")
    z2_hidden_dim: int = Field(100, ge=1, description="units of the layers between z1 and z2")
    depth: int = Field(2, ge=1, description="deterministic layers between stochastic layers")
    activation: Activation = "tanh"


class HierarchicalVAE(VAE):
    def __init__(self, config: HierarchicalConfig, image_shape: tuple[int, int], classes: int = 0):
        super().__init__(config, image_shape, classes)
        self.latent_dim = config.latent_dim
        self.z2_dim = config.z2_dim
        d, z1, z2 = image_shape[0] * image_shape[1], config.latent_dim, config.z2_dim
        wide, narrow = config.hidden_dim, config.z2_hidden_dim

        def layers(n_in: int, width: int) -> nn.Sequential:
            return stack(n_in, width, config.depth, config.dropout, config.activation)

        self.encoder = nn.Sequential(layers(d, wide), gaussian_heads(wide, z1))  # q(z1|x)
        self.up = nn.Sequential(layers(z1, narrow), gaussian_heads(narrow, z2))  # q(z2|z1)
        self.down = nn.Sequential(layers(z2, narrow), gaussian_heads(narrow, z1))  # p(z1|z2)
        self.decoder = nn.Sequential(  # p(x|z1) (p(x|z1, y))
            layers(self.decoder_input_dim, wide), nn.Linear(wide, d)
        )

    @property
    def closed_form_kl(self) -> bool:
        return False

    def encode_images(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return split_heads(self.encoder(x.flatten(1)))

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).view(-1, *self.image_shape)

    def q_z2(self, z1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar) of q(z2|z1), in fp32 for the densities."""
        mu, logvar = split_heads(self.up(z1))
        return at_least_fp32(mu), at_least_fp32(logvar)

    def p_z1(self, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar) of the learned prior p(z1|z2), in fp32 for the densities."""
        mu, logvar = split_heads(self.down(z2))
        return at_least_fp32(mu), at_least_fp32(logvar)

    def posterior(
        self,
        x: torch.Tensor,
        samples: int = 1,
        generator: torch.Generator | None = None,
        y: torch.Tensor | None = None,
    ) -> Posterior:
        z1, log_q1, bottom = self.encoder_sample(x, samples, generator, y)
        mu2, logvar2 = self.q_z2(z1)
        z2 = reparameterize(mu2, logvar2, generator)
        prior_mu1, prior_logvar1 = self.p_z1(z2)
        log_q = log_q1 + log_normal(z2, mu2, logvar2).sum(-1)
        log_p = log_normal(z1, prior_mu1, prior_logvar1).sum(-1) + log_standard_normal(z2).sum(-1)
        layers = (
            bottom._replace(prior_mu=prior_mu1, prior_logvar=prior_logvar1),
            Layer(mu2, logvar2),
        )
        return Posterior(z1, log_q, log_p, log_q - log_p, layers, exact=False)

    def sample_prior(self, n: int, generator: torch.Generator) -> torch.Tensor:
        z2 = torch.randn(n, self.z2_dim, device=generator.device, generator=generator)
        return reparameterize(*self.p_z1(z2), generator)
