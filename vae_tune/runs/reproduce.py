"""`vae-tune train`: train one run config, as a trial would, then score it on the test split.

The same `vae_tune.training.trainer.train` runs here and in every trial, so an exported best config
reproduces its trial's validation ELBO; only here is the test split ever evaluated. The model
is kept as a run directory (`--output`, `vae_tune.runs.rundir`) or a lone model file (`--save`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vae_tune.data import load_splits
from vae_tune.files import check_new_dir, check_writable, write_atomic
from vae_tune.runs.rundir import write_run
from vae_tune.runs.saved_model import model_bytes
from vae_tune.training.config import RunConfig
from vae_tune.training.trainer import Evaluation, TrainResult, score_test_split, train


@dataclass(frozen=True)
class Reproduced:
    run: TrainResult
    test: Evaluation
    written: list[str] = field(default_factory=list)  # files of the run directory


def reproduce(
    config: RunConfig,
    on_epoch: Callable[[TrainResult], None] | None = None,
    save: Path | None = None,
    output: Path | None = None,
    force: bool = False,
) -> Reproduced:
    """Train `config` and evaluate the test split. With `output`, write a run directory; with
    `save`, the model file alone. Both are checked before training and written whole or not
    at all."""
    if save is not None:
        check_writable(save, "save")
    if output is not None:
        check_new_dir(output, force)
    splits = load_splits(config.dataset, config.data_seed, config.likelihood.name)
    run = train(config, splits, on_epoch)
    test = score_test_split(config, run.model, run.likelihood, splits, run.device)
    if save is not None:
        write_atomic(
            save, model_bytes(config, run.model, run.likelihood, splits.image_shape), "save"
        )
    written = write_run(output, config, run, test, splits, force) if output is not None else []
    return Reproduced(run, test, written)
