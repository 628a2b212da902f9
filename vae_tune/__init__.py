"""vae-tune: hyperparameter tuning for variational autoencoders, yours or ours.

    import vae_tune
    result = vae_tune.tune("quickstart", n_trials=10)       # or a YAML file, a dict, a StudySpec
    model = vae_tune.train(result.best_config, output="runs/best")
    model = vae_tune.load("runs/best"); model.sample(16)

    @vae_tune.architecture("my_vae", config=MyConfig)        # your own VAE, searchable by name
    class MyVAE(torch.nn.Module): ...

The names below load on first use, so `import vae_tune` (and the `vae-tune` command's start)
stays light until a study is run.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from vae_tune.version import __version__

if TYPE_CHECKING:  # the names below, for type checkers and editors
    from vae_tune.api import Result as Result
    from vae_tune.api import TrainedModel as TrainedModel
    from vae_tune.api import load as load
    from vae_tune.api import train as train
    from vae_tune.api import tune as tune
    from vae_tune.models.base import VAE as VAE
    from vae_tune.models.config import ModelConfig as ModelConfig
    from vae_tune.models.registry import architecture as architecture
    from vae_tune.models.registry import architectures as architectures
    from vae_tune.training.config import RunConfig as RunConfig
    from vae_tune.tuning.spec import StudySpec as StudySpec

_EXPORTS = {
    "tune": "vae_tune.api",
    "submit": "vae_tune.api",
    "Submitted": "vae_tune.api",
    "train": "vae_tune.api",
    "load": "vae_tune.api",
    "Result": "vae_tune.api",
    "TrainedModel": "vae_tune.api",
    "architecture": "vae_tune.models.registry",
    "architectures": "vae_tune.models.registry",
    "ModelConfig": "vae_tune.models.config",
    "VAE": "vae_tune.models.base",
    "RunConfig": "vae_tune.training.config",
    "StudySpec": "vae_tune.tuning.spec",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vae_tune' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
