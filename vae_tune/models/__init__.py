"""The VAE zoo: architectures by name (see `registry`) and the shared ELBO terms (`losses`)."""

from vae_tune.models.base import VAE, VAEOutput
from vae_tune.models.registry import (
    architectures,
    build_model,
    config_class,
    config_fields,
    parse_config,
)

__all__ = [
    "VAE",
    "VAEOutput",
    "architectures",
    "build_model",
    "config_class",
    "config_fields",
    "parse_config",
]
