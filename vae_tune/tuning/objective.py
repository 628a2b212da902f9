"""The trial runner: sample a config, train it, report validation ELBO each epoch, prune.

A completed trial also gets its diagnostics (importance-weighted NLL, KL per latent dimension,
active units, a posterior-collapse flag) and two pictures in the artifact store, recorded on
the trial (`vae_tune.tuning.record`); `vae-tune dashboard` turns them into each trial's note.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.artifacts import upload_artifact

from vae_tune.data import Splits
from vae_tune.seeds import derive
from vae_tune.training.diagnostics import iw_nll
from vae_tune.training.pictures import save_pictures
from vae_tune.training.trainer import (
    Checkpoints,
    EpochResult,
    NonFiniteLoss,
    TrainResult,
    eval_targets,
    model_labels,
    train,
)
from vae_tune.tuning import record
from vae_tune.tuning.artifacts import open_artifact_store
from vae_tune.tuning.checkpoint import seed_number
from vae_tune.tuning.search_space import run_config, suggest
from vae_tune.tuning.spec import StudySpec

Progress = Callable[[int, EpochResult, int], None]  # (trial number, epoch result, max epochs)
# the parts of a trial's record `seconds` besides "trial" (the whole), as summaries name them
TIME_PARTS = {
    "train": "training",
    "validation": "validation",
    "iw_nll": "IW-NLL",
    "pictures": "pictures",
    "other": "the rest",
}


@dataclass
class TrialClock:
    """Where one trial's wall time goes: training steps and validation (from the run's
    history), the importance-weighted NLL and pictures of a completed trial, and the rest
    (sampling, building the model, data to the device, storage writes, checkpoints): the
    fixed cost a trial pays besides the work it is there for."""

    started: float = field(default_factory=time.perf_counter)
    train: float = 0.0
    validation: float = 0.0
    iw_nll: float = 0.0
    pictures: float = 0.0

    def epoch(self, run: TrainResult) -> None:
        """Take the training and validation time of this attempt (not a resumed one's)."""
        before = run.history[run.resumed_from_epoch - 1] if run.resumed_from_epoch else None
        self.train = run.final.train_seconds - (before.train_seconds if before else 0.0)
        self.validation = run.final.val_seconds - (before.val_seconds if before else 0.0)

    def timed(self, part: str, started: float) -> None:
        setattr(self, part, getattr(self, part) + time.perf_counter() - started)

    def seconds(self) -> dict[str, float]:
        total = time.perf_counter() - self.started
        parts = {part: getattr(self, part) for part in TIME_PARTS if part != "other"}
        rest = max(0.0, total - sum(parts.values()))
        return {k: round(v, 4) for k, v in {"trial": total, **parts, "other": rest}.items()}


class Objective:
    """Callable for `study.optimize`: the validation ELBO (beta = 1, nats/example) to maximize,
    or with `objective: rate_distortion` the validation (rate, distortion) to minimize."""

    def __init__(
        self,
        spec: StudySpec,
        splits: Splits,
        checkpoints_factory: Callable[[optuna.Trial], Checkpoints] | None = None,
        *,
        should_stop: Callable[[], bool] | None = None,
        progress: Progress | None = None,
        seconds_left: Callable[[], float | None] | None = None,
    ):
        """`should_stop` is polled between training batches; True stops the trial's training
        with `vae_tune.training.trainer.TrainingInterrupted` (a KeyboardInterrupt). `progress`
        sees every finished epoch (to show live progress). `seconds_left` says, as a trial
        starts, how many seconds the study's budget has left (None: no limit); the trial's
        training stops there, or at `budget.trial_seconds`, whichever comes first."""
        self.spec = spec
        self.splits = splits
        self.checkpoints_factory = checkpoints_factory
        self.should_stop = should_stop
        self.progress = progress
        self.seconds_left = seconds_left

    def seconds_limit(self) -> float | None:
        """The training seconds this trial may spend (None: as many as its epochs take)."""
        limits = [self.spec.budget.trial_seconds]
        if self.seconds_left is not None:
            limits.append(self.seconds_left())
        given = [max(0.0, v) for v in limits if v is not None]
        return min(given) if given else None

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        clock = TrialClock()
        try:
            value = self._run(trial, clock)
        except optuna.TrialPruned:
            record.write(trial, seconds=clock.seconds())
            raise
        record.write(trial, seconds=clock.seconds())
        return value

    def _run(self, trial: optuna.Trial, clock: TrialClock) -> float | tuple[float, float]:
        # a retry is seeded like the trial it retries, so it can resume that trial's checkpoint
        config = run_config(self.spec, suggest(trial, self.spec.search_space), seed_number(trial))
        record.write(trial, config=config.model_dump(mode="json", exclude={"source"}))
        record.write(trial, seed=config.seed)
        prune_collapse = self.spec.training.collapse == "prune"
        multi = self.spec.objective == "rate_distortion"
        curve = list(record.read(trial).val_elbo_curve or [])  # a retry's so far
        by_seconds = self.spec.pruner.fidelity == "seconds"
        limit = self.seconds_limit()
        steps = [0]  # the last step reported
        n_train = len(self.splits.train)

        def on_epoch(run: TrainResult) -> None:
            clock.epoch(run)
            r = run.final
            if r.epoch == 1:
                record.write(
                    trial,
                    device=str(run.device),
                    precision=run.precision,
                    num_parameters=run.num_parameters,
                    kl_estimator=run.model.kl_estimator,
                )
                if run.model.conditional:  # its ELBO bounds log p(x|y), not log p(x)
                    record.write(trial, conditional_classes=run.model.classes)
            if multi:  # Optuna takes no intermediate values here: keep the curve ourselves
                curve[r.epoch - 1 :] = [round(r.val.elbo, 4)]
                record.write(trial, val_elbo_curve=curve)
            else:
                # seconds: the compute spent so far, so trials compare at equal cost
                step = max(steps[0] + 1, math.ceil(r.train_seconds)) if by_seconds else r.epoch
                trial.report(r.val.elbo, step)
                steps[0] = step
            if self.progress is not None:
                self.progress(trial.number, r, config.epochs)
            record.write(
                trial,
                epochs_run=r.epoch,
                train_seconds=round(r.train_seconds, 3),
                seconds_per_epoch=round(n_train / r.examples_per_s, 4),
            )
            if prune_collapse and r.val.active_units == 0 and r.epoch > config.warmup_epochs:
                _record(trial, run)
                reason = f"posterior collapse: no active units after epoch {r.epoch}"
                record.write(trial, stop_reason=reason)
                raise optuna.TrialPruned(reason)
            # the last epoch's work is done: stopping now saves nothing, and a PRUNED trial
            # would show the sampler a finished model as worse than every complete one; the
            # same at the seconds cap, where the trial completes with this epoch's ELBO
            last = r.epoch >= config.epochs or run.capped
            if run.capped:
                record.write(
                    trial,
                    capped=True,
                    stop_reason=f"training stopped at its {limit:.3g} s cap in epoch {r.epoch}",
                )
            if not multi and not last and trial.should_prune():
                _record(trial, run, judged_collapse=False)
                record.write(trial, stop_reason=f"pruned after epoch {r.epoch}")
                raise optuna.TrialPruned(f"validation ELBO {r.val.elbo:.2f} fell behind")

        checkpoints = self.checkpoints_factory(trial) if self.checkpoints_factory else None
        try:
            result = train(
                config,
                self.splits,
                on_epoch,
                checkpoints=checkpoints,
                should_stop=self.should_stop,
                seconds_limit=limit,
            )
        except NonFiniteLoss as err:
            # pruned, not failed: samplers (TPE) then learn to avoid this region
            record.write(trial, stop_reason=str(err))
            raise optuna.TrialPruned(str(err)) from None
        if result.resumed_from_epoch:
            record.write(trial, resumed_from_epoch=result.resumed_from_epoch)
        _record(trial, result)
        x_val = eval_targets(config, self.splits.val.to(result.device), 1)
        y_val = model_labels(result.model, self.splits, "val", result.device)
        if config.iw_samples:
            started = time.perf_counter()
            k, x_nll = config.iw_samples, x_val[: config.iw_examples]  # val order is random
            y_nll = None if y_val is None else y_val[: config.iw_examples]
            seed = derive(config.data_seed, "iw-nll")  # the same noise for every trial
            nll = iw_nll(result.model, result.likelihood, x_nll, k, seed, labels=y_nll)
            record.write(trial, val_iw_nll=nll, iw_samples=k, iw_examples=len(x_nll))
            clock.timed("iw_nll", started)
        if self.spec.training.pictures and self._worth_drawing(trial, result.final.val.elbo):
            started = time.perf_counter()
            self._pictures(trial, result, x_val, y_val, config.beta)
            clock.timed("pictures", started)
        val = result.final.val
        return (val.kl, -val.recon) if multi else val.elbo

    def _worth_drawing(self, trial: optuna.Trial, elbo: float) -> bool:
        """Images: every completed trial. A table's plots cost about a second (matplotlib),
        often more than its training: drawn for the trials that beat the study's best so far
        (the report shows the best trial's)."""
        if not self.splits.vectors or len(trial.study.directions) > 1:
            return True
        try:
            return elbo > trial.study.best_value
        except ValueError:  # no completed trial yet
            return True

    def _pictures(
        self, trial: optuna.Trial, result: TrainResult, x_val, y_val, beta: float
    ) -> None:
        store = open_artifact_store(self.spec.storage, self.spec.artifact_dir)
        with tempfile.TemporaryDirectory() as tmp:
            caption = (
                f"study {self.spec.study_name}, trial {trial.number}, beta "
                f"{beta:.3g}, validation ELBO {result.final.val.elbo:.2f} nats"
            )
            pictures = save_pictures(
                result.model,
                result.likelihood,
                x_val,
                Path(tmp),
                0,
                caption,
                labels=y_val,
                splits=self.splits,
            )
            for path in pictures:
                upload_artifact(
                    artifact_store=store,
                    file_path=str(path),
                    study_or_trial=trial,
                    mimetype="image/png",
                )


def _record(trial: optuna.Trial, run: TrainResult, judged_collapse: bool = True) -> None:
    """Store the diagnostics of the last finished epoch on the trial. `posterior_collapse` is
    set only where it is a verdict (a completed trial, or one stopped for collapse): a trial
    pruned for its ELBO after an epoch or two has few active units because it stopped early,
    and counting those called 12 of the quickstart's 20 trials collapsed."""
    r = run.final
    record.write(
        trial,
        val_recon=r.val.recon,
        val_kl=r.val.kl,
        active_units=r.val.active_units,
        active_units_per_layer=list(r.val.active_units_per_layer),
        kl_per_dim=[round(v, 4) for v in r.val.kl_per_dim],
        wall_seconds=round(r.wall_seconds, 3),
        train_examples_per_s=round(r.examples_per_s, 1),
    )
    if judged_collapse:
        record.write(trial, posterior_collapse=r.val.active_units == 0)
