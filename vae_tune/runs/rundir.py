"""A run directory: the trained model `vae-tune train --output` keeps, which `sample` and
`evaluate` read back. One place names its files:

    RUN/config.yaml        the resolved run config (what `vae-tune train` reads again)
    RUN/model.pt           the model file (`vae_tune.runs.saved_model`)
    RUN/metrics.json       learning curve, final validation and test ELBO; `evaluate` adds to it
    RUN/reconstructions.png, RUN/samples.png    the pictures a trial stores
    RUN/pictures/          what `vae-tune sample` draws

The folder is built beside its destination and renamed into place whole (`vae_tune.files`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vae_tune.data import Splits
from vae_tune.errors import UserError
from vae_tune.files import write_atomic, write_dir_atomic
from vae_tune.runs.saved_model import SavedModel, load_model, model_bytes
from vae_tune.seeds import derive
from vae_tune.training.config import RunConfig, write_config
from vae_tune.training.pictures import save_pictures
from vae_tune.training.trainer import Evaluation, TrainResult, eval_targets, model_labels

CONFIG = "config.yaml"
MODEL = "model.pt"
METRICS = "metrics.json"
PICTURES = "pictures"


def _evaluation(e: Evaluation) -> dict[str, Any]:
    d = asdict(e)
    return {**d, "kl_per_dim": list(e.kl_per_dim), "active_dims": list(e.active_dims)}


def run_metrics(run: TrainResult, test: Evaluation, splits: Splits) -> dict[str, Any]:
    """What metrics.json holds after training (nats per example, beta = 1)."""
    return {
        "image_shape": list(splits.image_shape),
        "examples": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)},
        "device": str(run.device),
        "precision": run.precision,
        "num_parameters": run.num_parameters,
        "epochs": [
            {
                "epoch": r.epoch,
                "train_loss": r.train_loss,
                "val_elbo": r.val.elbo,
                "val_recon": r.val.recon,
                "val_kl": r.val.kl,
                "active_units": r.val.active_units,
                "wall_seconds": round(r.wall_seconds, 3),
                "examples_per_s": round(r.examples_per_s, 1),
            }
            for r in run.history
        ],
        "validation": _evaluation(run.final.val),
        "test": _evaluation(test),
    }


def write_run(
    output: Path,
    config: RunConfig,
    run: TrainResult,
    test: Evaluation,
    splits: Splits,
    force: bool = False,
) -> list[str]:
    """Write the run directory whole (or nothing); returns the names written."""
    with write_dir_atomic(output, force) as tmp:
        write_config(config.model_dump(mode="json"), tmp / CONFIG)
        (tmp / MODEL).write_bytes(
            model_bytes(config, run.model, run.likelihood, splits.image_shape)
        )
        metrics = run_metrics(run, test, splits)
        (tmp / METRICS).write_text(json.dumps(metrics, indent=2) + "\n")
        x_test = eval_targets(config, splits.test.to(run.device), 2)
        seed = derive(config.data_seed, "run-pictures")
        caption = (
            f"run {output.name}, beta {config.beta:.3g}, test ELBO {test.elbo:.2f} nats "
            "(test images)"
        )
        y_test = model_labels(run.model, splits, "test", run.device)
        pictures = save_pictures(
            run.model, run.likelihood, x_test, tmp, seed, caption, labels=y_test,
            splits=splits, split="test",
        )
        return [CONFIG, MODEL, METRICS, *(p.name for p in pictures)]


@dataclass
class Run:
    """A run directory opened for use: its folder and its model, loaded."""

    path: Path
    saved: SavedModel

    @property
    def config(self) -> RunConfig:
        return self.saved.config

    @property
    def pictures(self) -> Path:
        return self.path / PICTURES


def open_run(path: Path, device: str | None = None, data_dir: str | None = None) -> Run:
    """Open RUN (a folder written by `vae-tune train --output`) with its model on `device`;
    `data_dir` says where its dataset's files are now (when the run moved machines)."""
    path = Path(path)
    if not path.is_dir():
        hint = (
            " (a --save file: `train --output DIR` writes a run folder)" if path.is_file() else ""
        )
        raise UserError(f"{path} is not a run directory{hint}", "run")
    if not (path / MODEL).is_file():
        raise UserError(
            f"{path} holds no {MODEL}; make a run with `vae-tune train CONFIG --output {path}`",
            "run",
        )
    saved = load_model(path / MODEL, device)
    if data_dir is not None:
        dataset = saved.config.dataset.model_copy(update={"data_dir": data_dir})
        saved.config = saved.config.model_copy(update={"dataset": dataset})
    return Run(path, saved)


def read_metrics(run: Run) -> dict[str, Any]:
    try:
        data = json.loads((run.path / METRICS).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        raise UserError(f"{run.path / METRICS}: cannot read as JSON ({err})", "run") from None
    if not isinstance(data, dict):
        raise UserError(f"{run.path / METRICS}: expected a JSON object", "run")
    return data


def add_metrics(run: Run, key: str, block: dict[str, Any]) -> Path:
    """Set `key` in metrics.json to `block` (replacing an earlier one), written atomically."""
    metrics = read_metrics(run)
    metrics[key] = block
    path = run.path / METRICS
    write_atomic(path, json.dumps(metrics, indent=2) + "\n", "run")
    return path
