"""Architectures by name: one place maps a plain config (dict) to a model and its typed config."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from models.base import VAE
from models.conv import ConvConfig, ConvVAE
from models.hybrid import HybridConfig, HybridVAE
from models.mlp import MLPVAE, MLPConfig
from models.rnn import RNNVAE, RNNConfig

REGISTRY: dict[str, tuple[type[VAE], type]] = {
    "mlp": (MLPVAE, MLPConfig),
    "conv": (ConvVAE, ConvConfig),
    "rnn": (RNNVAE, RNNConfig),
    "hybrid": (HybridVAE, HybridConfig),
}


def architectures() -> list[str]:
    return sorted(REGISTRY)


def config_fields(architecture: str) -> dict[str, Any]:
    """The knobs of an architecture and their defaults (latent_dim included)."""
    _, config_cls = REGISTRY[architecture]
    return {f.name: f.default for f in dataclasses.fields(config_cls)}


def build_model(config: Mapping[str, Any], image_shape: tuple[int, int]) -> VAE:
    """Build a VAE from `{"architecture": name, **knobs}`; unknown names or knobs raise."""
    params = dict(config)
    name = params.pop("architecture")
    if name not in REGISTRY:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(architectures())}")
    model_cls, config_cls = REGISTRY[name]
    unknown = set(params) - set(config_fields(name))
    if unknown:
        raise ValueError(f"unknown {name} options: {', '.join(sorted(unknown))}")
    return model_cls(config_cls(**params), image_shape)
