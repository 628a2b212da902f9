"""Architectures by name: the shipped ones, the user's own (a decorator, a reference in a spec,
or an installed plugin), and one place that maps a plain config to a model and its typed config.

A name resolves in this order: registered in this process (shipped, decorated, or named by a
reference earlier), an installed plugin of the entry-point group `vae_tune.architectures`, or
a reference itself (`mypkg.vae:MyVAE`, `path/to/file.py:MyVAE`), imported on first use. Every
worker process resolves names the same way, so a model that a fresh interpreter can import
is trained the same everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, TypeVar

from torch import nn

from vae_tune.errors import SpecError
from vae_tune.models.base import VAE
from vae_tune.models.config import ModelConfig
from vae_tune.models.conv import ConvConfig, ConvVAE
from vae_tune.models.hierarchical import HierarchicalConfig, HierarchicalVAE
from vae_tune.models.hybrid import HybridConfig, HybridVAE
from vae_tune.models.mlp import MLPVAE, MLPConfig
from vae_tune.models.plugins import (
    check_contract,
    config_of,
    import_reference,
    is_reference,
    reference_of,
)
from vae_tune.models.rnn import RNNVAE, RNNConfig
from vae_tune.models.user_vae import UserVAE

ENTRY_POINT_GROUP = "vae_tune.architectures"
M = TypeVar("M", bound=type[nn.Module])


@dataclass(frozen=True)
class Architecture:
    """One architecture: its class, its typed config (whose fields are the searchable knobs),
    and where it came from. `reference` is what a fresh process imports to find it (None: it
    is shipped, an installed plugin, or was defined where no process can import it: a
    notebook cell)."""

    name: str
    model: type[nn.Module]
    config: type[ModelConfig]
    origin: str  # shipped | decorator | reference | plugin
    reference: str | None = None

    @property
    def portable(self) -> bool:
        """Whether another process finds it by name alone or by its reference."""
        return self.origin in ("shipped", "plugin") or self.reference is not None


SHIPPED = {
    "mlp": (MLPVAE, MLPConfig),
    "conv": (ConvVAE, ConvConfig),
    "rnn": (RNNVAE, RNNConfig),
    "hybrid": (HybridVAE, HybridConfig),
    "hierarchical": (HierarchicalVAE, HierarchicalConfig),
}
REGISTRY: dict[str, Architecture] = {
    name: Architecture(name, model, config, "shipped") for name, (model, config) in SHIPPED.items()
}


def _plugins() -> dict[str, Any]:
    """Installed plugins by name (their entry points; nothing is imported yet)."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def register(
    name: str, model: type[nn.Module], config: type[ModelConfig] | None = None, *,
    origin: str = "decorator", reference: str | None = None,
) -> Architecture:
    """Make `model` searchable as `name` (a later registration of the same name replaces it,
    as re-running a notebook cell does). Raises SpecError if it breaks the contract."""
    if not isinstance(name, str) or not name or any(c.isspace() for c in name):
        raise SpecError(f"an architecture name is a non-empty word, got {name!r}", "architecture")
    if name in SHIPPED and REGISTRY[name].model is not model:
        raise SpecError(f"{name!r} is a shipped architecture: choose another name", "architecture")
    config = config or config_of(model, name)
    check_contract(model, config, name)
    if reference is None and origin == "decorator":
        reference = reference_of(model)
    arch = Architecture(name, model, config, origin, reference)
    REGISTRY[name] = arch
    return arch


def architecture(name: str, *, config: type[ModelConfig] | None = None) -> Callable[[M], M]:
    """Class decorator: `@vae_tune.architecture("my_vae", config=MyConfig)` makes the class
    searchable as `my_vae`, with the fields of `MyConfig` as its knobs (see the contract in
    `vae_tune.models.plugins`)."""

    def decorate(cls: M) -> M:
        register(name, cls, config)
        return cls

    return decorate


def resolve(name: str) -> Architecture:
    """The architecture of `name`; raises SpecError naming what is wrong (an unknown name, a
    reference whose module, file or class is missing, a class that breaks the contract)."""
    if not isinstance(name, str):
        raise SpecError(f"an architecture is a name, got {name!r}", "architecture")
    if name in REGISTRY:
        return REGISTRY[name]
    plugin = _plugins().get(name)
    if plugin is not None:
        try:
            model = plugin.load()
        except Exception as err:  # a broken plugin may fail in any way: name it
            raise SpecError(
                f"plugin {name!r} ({plugin.value}) does not import: {type(err).__name__}: {err}",
                "architecture",
            ) from None
        return register(name, model, origin="plugin")
    if is_reference(name):
        model, reference = import_reference(name)
        return register(name, model, origin="reference", reference=reference)
    raise SpecError(
        f"unknown architecture {name!r}; known: {', '.join(architectures())} (or a reference "
        "such as mypkg.vae:MyVAE or path/to/file.py:MyVAE)",
        "architecture",
    )


def register_references(references: Mapping[str, str]) -> None:
    """Register each `name: reference` of a spec's or run config's `architectures` map."""
    for name, ref in references.items():
        known = REGISTRY.get(name)
        if known is not None and known.reference == ref:
            continue
        model, reference = import_reference(ref, f"architectures.{name}")
        register(name, model, origin="reference", reference=reference)


def architectures() -> list[str]:
    """Every name known here without importing anything new: shipped, registered, plugins."""
    return sorted(set(REGISTRY) | set(_plugins()))


def config_class(architecture: str) -> type[ModelConfig]:
    """The typed config of an architecture; an unknown name raises SpecError (a ValueError)."""
    return resolve(architecture).config


def config_fields(architecture: str) -> dict[str, Any]:
    """The knobs of an architecture and their defaults (latent_dim and dropout included)."""
    return {name: f.default for name, f in config_class(architecture).model_fields.items()}


def parse_config(config: Mapping[str, Any]) -> tuple[str, ModelConfig]:
    """`{"architecture": name, **knobs}` -> (name, typed config). Raises SpecError for an
    unknown architecture and pydantic's ValidationError (a ValueError) for a bad knob."""
    params = dict(config)
    name = params.pop("architecture", None)
    return name, config_class(name).model_validate(params)


def build_model(config: Mapping[str, Any], image_shape: tuple[int, int], classes: int = 0) -> VAE:
    """Build a VAE from `{"architecture": name, **knobs}`; unknown names or bad knobs raise.
    `classes`: how many labels the data has (0: none), for a `conditional: true` config. A
    user's module that is not a `VAE` subclass is wrapped (`UserVAE`) and its shapes checked."""
    name, typed = parse_config(config)
    model = resolve(name).model
    if issubclass(model, VAE):
        return model(typed, image_shape, classes)
    return UserVAE(model, typed, image_shape, classes, name)
