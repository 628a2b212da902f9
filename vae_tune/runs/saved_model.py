"""The model file (`model.pt`): a trained VAE that any later command can load back.

It holds tensors and plain data only (state dicts of the model and of the likelihood, whose
learned Gaussian scale is a parameter, the image shape, the resolved run config and the
versions that wrote it) and is read with `torch.load(weights_only=True)`, which unpickles no
objects: a tampered or foreign file is refused with one line instead of running its code.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vae_tune.errors import UserError
from vae_tune.models import VAE, build_model
from vae_tune.models.likelihoods import Likelihood
from vae_tune.training.config import RunConfig, validate
from vae_tune.training.trainer import make_likelihood, resolve_device
from vae_tune.version import __version__

FORMAT = "vae-tune model"
FORMAT_VERSION = 1
KEYS = ("format", "format_version", "model", "likelihood", "image_shape", "config", "versions")


@dataclass
class SavedModel:
    """A model loaded back, on `device`, in eval mode."""

    config: RunConfig
    model: VAE
    likelihood: Likelihood
    image_shape: tuple[int, int]
    device: torch.device
    versions: dict[str, str]


def model_bytes(
    config: RunConfig, model: VAE, likelihood: Likelihood, image_shape: tuple[int, int]
) -> bytes:
    """The model file's contents (tensors on the CPU, so it loads on any machine)."""

    def cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in state.items()}

    state = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": cpu(model.state_dict()),
        "likelihood": cpu(likelihood.state_dict()),
        "image_shape": [int(n) for n in image_shape],
        "classes": model.classes,  # a conditional model's label inputs (0: unconditional)
        "config": config.model_dump(mode="json"),
        "versions": {"vae_tune": __version__, "torch": str(torch.__version__)},
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _read(path: Path) -> dict[str, Any]:
    """The file's dict, read without unpickling objects; anything else is the user's error."""
    if not path.is_file():
        raise UserError(f"{path}: no such model file (write one with `vae-tune train --output`)")
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickles: we refuse them
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a foreign file may fail in any way: refuse it, whatever it is
        raise UserError(
            f"{path}: not a vae-tune model file, refused ({_reason(err)})", "model"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path}: not a vae-tune model file (no '{FORMAT}' header)", "model")
    missing = [k for k in KEYS if k not in state]
    if missing:
        raise UserError(f"{path}: damaged model file, missing {', '.join(missing)}", "model")
    if state["format_version"] != FORMAT_VERSION:
        raise UserError(
            f"{path}: model file format {state['format_version']!r}; this vae-tune reads "
            f"{FORMAT_VERSION} (vae-tune {__version__})",
            "model",
        )
    return state


def _reason(err: Exception) -> str:
    """The line of a load error that says what was wrong (torch's are paragraphs)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    said = next((ln for ln in lines if "WeightsUnpickler error" in ln), lines[0] if lines else "")
    said = said.split("error: ", 1)[-1].split(". Please use")[0]
    return (said or type(err).__name__)[:200]


def _image_shape(path: Path, value: Any) -> tuple[int, int]:
    ok = isinstance(value, list | tuple) and len(value) == 2
    if not ok or not all(isinstance(n, int) and n > 0 for n in value):
        raise UserError(f"{path}: damaged model file, bad image_shape {value!r}", "model")
    return int(value[0]), int(value[1])


def load_model(path: Path, device: str | None = None) -> SavedModel:
    """Load a model file onto `device` (default: the config's, `auto` picking CUDA when
    present). Every part is checked: a file that is not one exits 2 naming what is wrong."""
    path = Path(path)
    state = _read(path)
    image_shape = _image_shape(path, state["image_shape"])
    classes = state.get("classes", 0)  # files without it hold unconditional models
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 0:
        raise UserError(f"{path}: damaged model file, bad classes {classes!r}", "model")
    if not isinstance(state["config"], dict):
        raise UserError(f"{path}: damaged model file, config is not a mapping", "model")
    config: RunConfig = validate(RunConfig, state["config"], f"config in {path}")
    if device is not None:
        config = config.model_copy(update={"device": validate_device(device)})
    where = resolve_device(config.device)
    try:
        model = build_model(config.model, image_shape, classes)
        likelihood = make_likelihood(config, image_shape)
        model.load_state_dict(state["model"])
        likelihood.load_state_dict(state["likelihood"])
    except (RuntimeError, TypeError, ValueError, AttributeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{path}: weights do not fit its config ({first[:200]})", "model") from None
    versions = state["versions"] if isinstance(state["versions"], dict) else {}
    return SavedModel(
        config,
        model.to(where).eval(),
        likelihood.to(where).eval(),
        image_shape,
        where,
        {str(k): str(v) for k, v in versions.items()},
    )


def validate_device(device: str) -> str:
    """A --device value checked like the config's `device` field."""
    return validate(RunConfig, {"device": device}, "--device").device
