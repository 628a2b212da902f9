"""The trial runner: sample a config, train it, report validation ELBO each epoch, prune."""

from __future__ import annotations

import optuna

from tuner.datasets import Splits
from tuner.search_space import run_config, suggest
from tuner.spec import StudySpec
from tuner.train import NonFiniteLoss, TrainResult, train


class Objective:
    """Callable for `study.optimize`; maximizes the validation ELBO (beta = 1, nats/example)."""

    def __init__(self, spec: StudySpec, splits: Splits):
        self.spec = spec
        self.splits = splits

    def __call__(self, trial: optuna.Trial) -> float:
        config = run_config(self.spec, suggest(trial, self.spec.search_space), trial.number)
        trial.set_user_attr("config", config.model_dump(mode="json", exclude={"source"}))
        trial.set_user_attr("seed", config.seed)

        def on_epoch(run: TrainResult) -> None:
            r = run.final
            if r.epoch == 1:
                trial.set_user_attr("device", str(run.device))
                trial.set_user_attr("num_parameters", run.num_parameters)
            trial.report(r.val.elbo, r.epoch)
            trial.set_user_attr("epochs_run", r.epoch)
            if trial.should_prune():
                _record(trial, run)
                trial.set_user_attr("stop_reason", f"pruned after epoch {r.epoch}")
                raise optuna.TrialPruned(f"validation ELBO {r.val.elbo:.2f} fell behind")

        try:
            result = train(config, self.splits, on_epoch)
        except NonFiniteLoss as err:
            # pruned, not failed: samplers (TPE) then learn to avoid this region
            trial.set_user_attr("stop_reason", str(err))
            raise optuna.TrialPruned(str(err)) from None
        _record(trial, result)
        return result.final.val.elbo


def _record(trial: optuna.Trial, run: TrainResult) -> None:
    """Store the diagnostics of the last finished epoch on the trial."""
    r = run.final
    trial.set_user_attr("val_recon", r.val.recon)
    trial.set_user_attr("val_kl", r.val.kl)
    trial.set_user_attr("active_units", r.val.active_units)
    trial.set_user_attr("wall_seconds", round(r.wall_seconds, 3))
    trial.set_user_attr("train_examples_per_s", round(r.examples_per_s, 1))
