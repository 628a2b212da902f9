"""What a trial records about itself: one typed schema, written and read through this module.

Optuna keeps it as the trial's user attributes, one JSON value per field, so optuna-dashboard
and plain Optuna scripts read it too. Every writer calls `write` (a misspelt field or a value
of the wrong type raises at once instead of being stored), and every reader `read`, which
ignores attributes it does not know (a newer vae-tune's, or the user's own).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from pydantic import BaseModel, ConfigDict

Trial = optuna.Trial | FrozenTrial


class Checkpoint(BaseModel):
    artifact_id: str
    epoch: int


class ResumedFrom(BaseModel):
    trial: int
    epoch: int


class TrialRecord(BaseModel):
    """Every user attribute vae-tune stores on a trial (None: not recorded)."""

    model_config = ConfigDict(extra="ignore")

    # set when the trial starts
    config: dict[str, Any] | None = None  # the full run config (RunConfig as JSON)
    seed: int | None = None
    worker: str | None = None  # host:pid of the process that runs it
    queued: str | None = None  # why it was queued: "baseline", a warm start, a config file
    # set after the first epoch
    device: str | None = None
    precision: str | None = None  # fp32, bf16 or bf16-matmul
    num_parameters: int | None = None
    kl_estimator: str | None = None  # closed form | monte carlo
    conditional_classes: int | None = None  # its ELBO bounds log p(x|y)
    # every epoch
    epochs_run: int | None = None
    val_elbo_curve: list[float] | None = None  # where Optuna keeps no intermediate values
    checkpoint: Checkpoint | None = None  # the newest training state in the artifact store
    resumed_from: ResumedFrom | None = None
    resumed_from_epoch: int | None = None
    # the last finished epoch's validation diagnostics (pruned and complete trials)
    val_recon: float | None = None  # E[log p(x|z)], nats per example
    val_kl: float | None = None  # KL(q(z|x) || p(z)), nats per example
    active_units: int | None = None
    active_units_per_layer: list[int] | None = None
    posterior_collapse: bool | None = None  # a verdict: complete, or stopped for collapse
    kl_per_dim: list[float] | None = None
    wall_seconds: float | None = None
    train_examples_per_s: float | None = None
    # what it cost (every epoch): the cost-aware sampler learns from these
    train_seconds: float | None = None  # training steps, cumulative
    seconds_per_epoch: float | None = None  # training seconds per full pass over the data
    capped: bool | None = None  # its training stopped at budget.trial_seconds or budget.seconds
    # a completed trial
    val_iw_nll: float | None = None
    iw_samples: int | None = None
    iw_examples: int | None = None
    # how it ended
    stop_reason: str | None = None
    fail_reason: str | None = None
    seconds: dict[str, float] | None = None  # where its time went (TrialClock.seconds)

    @property
    def diagnosed(self) -> bool:
        """Whether it recorded its validation terms (rate and distortion)."""
        return self.val_kl is not None and self.val_recon is not None

    @property
    def model(self) -> dict[str, Any]:
        return (self.config or {}).get("model") or {}


FIELDS = frozenset(TrialRecord.model_fields)


def read(trial: Trial) -> TrialRecord:
    return TrialRecord.model_validate(trial.user_attrs)


def _checked(values: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(values) - FIELDS)
    if unknown:
        raise KeyError(f"not a field of the trial record: {', '.join(unknown)}")
    TrialRecord.model_validate(values)  # raises on a value of the wrong type
    return values


def write(trial: optuna.Trial, **values: Any) -> None:
    """Store fields of the record on a running trial."""
    for name, value in _checked(values).items():
        trial.set_user_attr(name, value)


def write_by_id(storage: optuna.storages.BaseStorage, trial_id: int, **values: Any) -> None:
    """Store fields of the record through the storage (a trial this process does not run)."""
    for name, value in _checked(values).items():
        storage.set_trial_user_attr(trial_id, name, value)


def queued_as(reason: str) -> dict[str, Any]:
    """The user attributes of a trial queued with `enqueue_trial`."""
    return _checked({"queued": reason})


# what the readers of a study ask of its trials


def rate_distortion(trial: Trial) -> tuple[float, float]:
    r = read(trial)
    if not r.diagnosed:
        raise ValueError(f"trial {trial.number} recorded no validation terms")
    return r.val_kl, -r.val_recon  # type: ignore[return-value, operator]


def validation_elbo(trial: Trial) -> float:
    """The validation ELBO at beta = 1 (= −rate − distortion), whatever the study optimizes."""
    if read(trial).diagnosed:
        return -sum(rate_distortion(trial))
    return trial.value  # type: ignore[return-value]


def latent_units(trial: Trial) -> int | None:
    """Units of every stochastic layer (z1 and z2 of a hierarchical model), else latent_dim."""
    r = read(trial)
    return len(r.kl_per_dim or ()) or r.model.get("latent_dim")


def with_diagnostics(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """Finished trials (complete or pruned) that recorded their validation terms."""
    done = (TrialState.COMPLETE, TrialState.PRUNED)
    return [t for t in trials if t.state in done and read(t).diagnosed]


def collapse_count(trials: Sequence[FrozenTrial]) -> tuple[int, int]:
    """(collapsed, judged): of the trials with a collapse verdict (completed ones and those
    stopped for collapse; one pruned for its ELBO has none), how many collapsed."""
    judged = [r.posterior_collapse for r in map(read, trials) if r.posterior_collapse is not None]
    return sum(map(bool, judged)), len(judged)


def elbo_curve(trial: FrozenTrial) -> list[tuple[int, float]]:
    """Validation ELBO per epoch: the reported values, or the stored curve where the study
    cannot report them (multi-objective studies)."""
    if trial.intermediate_values:
        return sorted(trial.intermediate_values.items())
    return [(i + 1, v) for i, v in enumerate(read(trial).val_elbo_curve or [])]
