"""Architectures by name: one place maps a plain config (dict) to a model and its typed config."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from models.base import VAE
from models.config import ModelConfig
from models.conv import ConvConfig, ConvVAE
from models.hierarchical import HierarchicalConfig, HierarchicalVAE
from models.hybrid import HybridConfig, HybridVAE
from models.mlp import MLPVAE, MLPConfig
from models.rnn import RNNVAE, RNNConfig

REGISTRY: dict[str, tuple[type[VAE], type[ModelConfig]]] = {
    "mlp": (MLPVAE, MLPConfig),
    "conv": (ConvVAE, ConvConfig),
    "rnn": (RNNVAE, RNNConfig),
    "hybrid": (HybridVAE, HybridConfig),
    "hierarchical": (HierarchicalVAE, HierarchicalConfig),
}


def architectures() -> list[str]:
    return sorted(REGISTRY)


def config_class(architecture: str) -> type[ModelConfig]:
    """The typed config of an architecture; an unknown name raises ValueError."""
    if architecture not in REGISTRY:
        raise ValueError(
            f"unknown architecture {architecture!r}; known: {', '.join(architectures())}"
        )
    return REGISTRY[architecture][1]


def config_fields(architecture: str) -> dict[str, Any]:
    """The knobs of an architecture and their defaults (latent_dim and dropout included)."""
    return {name: f.default for name, f in config_class(architecture).model_fields.items()}


def parse_config(config: Mapping[str, Any]) -> tuple[str, ModelConfig]:
    """`{"architecture": name, **knobs}` -> (name, typed config). Raises ValueError for an
    unknown architecture and pydantic's ValidationError (a ValueError) for a bad knob."""
    params = dict(config)
    name = params.pop("architecture", None)
    return name, config_class(name).model_validate(params)


def build_model(config: Mapping[str, Any], image_shape: tuple[int, int], classes: int = 0) -> VAE:
    """Build a VAE from `{"architecture": name, **knobs}`; unknown names or bad knobs raise.
    `classes`: how many labels the data has (0: none), for a `conditional: true` config."""
    name, typed = parse_config(config)
    return REGISTRY[name][0](typed, image_shape, classes)
