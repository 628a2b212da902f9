"""The weights' moving average: what a run evaluates and keeps, resumable, off with 0, and an
exported config from before it keeps its last weights, as it was scored."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from vae_tune.data import load_splits
from vae_tune.seeds import derive
from vae_tune.training.config import RunConfig
from vae_tune.training.trainer import eval_targets, evaluate, train
from vae_tune.training.weight_average import decay_at

TINY = {"name": "digits", "subset": 300}


def _config(**kw: Any) -> RunConfig:
    base = dict(
        dataset=TINY,
        model={"architecture": "mlp", "latent_dim": 4, "hidden_dim": 32},
        epochs=3,
        lr=1e-2,
        device="cpu",
        threads=1,
        iw_samples=0,
    )
    return RunConfig(**{**base, **kw})


def test_decay_warms_up_to_its_value():
    assert decay_at(0.999, 0) == pytest.approx(0.1)  # the first steps: mostly the new weights
    assert decay_at(0.999, 90) == pytest.approx(0.91)
    assert decay_at(0.999, 10**6) == 0.999
    assert decay_at(0.5, 10) == 0.5


def test_the_run_keeps_and_scores_the_average():
    last = train(_config(ema_decay=0))
    averaged = train(_config(ema_decay=0.99))
    near_zero = train(_config(ema_decay=1e-9))  # every update replaces the average
    # the same training steps (the average never feeds back into them) ...
    assert [h.train_loss for h in averaged.history] == [h.train_loss for h in last.history]
    # ... but another model is kept and scored: the average, not the last weights
    assert averaged.final.val.elbo != pytest.approx(last.final.val.elbo, abs=1e-3)
    assert near_zero.final.val.elbo == pytest.approx(last.final.val.elbo, abs=1e-4)
    for kept, final in zip(near_zero.model.parameters(), last.model.parameters(), strict=True):
        assert torch.allclose(kept, final, atol=1e-6)
    # the value reported is the kept model's own
    config = _config(ema_decay=0.99)
    x_val = eval_targets(config, load_splits(config.dataset, config.data_seed).val, 1)
    seed = derive(config.data_seed, "val-noise")
    again = evaluate(averaged.model, averaged.likelihood, x_val, config.eval_batch_size, seed)
    assert again.elbo == pytest.approx(averaged.final.val.elbo, abs=1e-6)


def test_configs_exported_before_averaging_train_on_their_last_weights():
    exported = _config().model_dump(mode="json")
    exported["source"] = {"study": "old", "trial": 0, "value": -40.0}
    del exported["ema_decay"]
    assert RunConfig.model_validate(exported).ema_decay == 0
    # written by hand (no `source`): the default
    del exported["source"]
    assert RunConfig.model_validate(exported).ema_decay == 0.999
