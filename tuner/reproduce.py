"""`vae-tune train`: train one run config, as a trial would, then score it on the test split.

The same `tuner.train.train` runs here and in every trial, so an exported best config
reproduces its trial's validation ELBO; only here is the test split ever evaluated.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from tuner.datasets import load_splits
from tuner.files import check_writable, write_atomic
from tuner.seeds import derive
from tuner.spec import RunConfig
from tuner.train import Evaluation, TrainResult, eval_targets, evaluate, train


@dataclass(frozen=True)
class Reproduced:
    run: TrainResult
    test: Evaluation


def reproduce(
    config: RunConfig,
    on_epoch: Callable[[TrainResult], None] | None = None,
    save: Path | None = None,
) -> Reproduced:
    """Train `config`, evaluate the test split; with `save`, write the weights (checked before
    training, written whole or not at all)."""
    if save is not None:
        check_writable(save, "save")
    splits = load_splits(config.dataset, config.data_seed)
    run = train(config, splits, on_epoch)
    x_test = eval_targets(config, splits.test.to(run.device), 2)
    noise = derive(config.data_seed, "test-noise")
    test = evaluate(run.model, run.likelihood, x_test, config.eval_batch_size, noise)
    if save is not None:
        buffer = io.BytesIO()
        state = {"config": config.model_dump(mode="json"), "state_dict": run.model.state_dict()}
        torch.save(state, buffer)
        write_atomic(save, buffer.getvalue(), "save")
    return Reproduced(run, test)
