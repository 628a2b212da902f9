"""Export a trial (the best, or a chosen point of a rate–distortion front) as a run config
that `vae-tune train` reproduces."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from vae_tune.errors import UserError
from vae_tune.training.config import RunConfig
from vae_tune.tuning.record import rate_distortion, read, validation_elbo, with_diagnostics
from vae_tune.tuning.study import best_trial


def _pick(study: optuna.Study, trial: int | None, max_rate: float | None) -> FrozenTrial:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise UserError(
            f"study {study.study_name!r} has no complete trial yet; run more trials first",
            "study_name",
        )
    if trial is not None:
        found = [t for t in complete if t.number == trial]
        if not found:
            raise UserError(f"study {study.study_name!r} has no complete trial {trial}", "trial")
        return found[0]
    if max_rate is not None:
        fits = [t for t in with_diagnostics(complete) if rate_distortion(t)[0] <= max_rate]
        if not fits:
            least = min(rate_distortion(t)[0] for t in with_diagnostics(complete))
            raise UserError(
                f"no complete trial has rate <= {max_rate} nats (the least is {least:.3f})",
                "max_rate",
            )
        return min(fits, key=lambda t: rate_distortion(t)[1])  # least distortion
    return best_trial(study)


def best_config(
    study: optuna.Study, trial: int | None = None, max_rate: float | None = None
) -> dict[str, Any]:
    """A trial's full training config, with where it came from under `source`: the best by
    validation ELBO, trial number `trial`, or the least distortion with rate <= `max_rate`
    (a point on a rate–distortion front)."""
    best = _pick(study, trial, max_rate)
    stored = read(best)
    if stored.config is None:
        raise UserError(
            f"trial {best.number} of study {study.study_name!r} has no stored config", "study_name"
        )
    config = RunConfig.model_validate(stored.config)
    rate, distortion = rate_distortion(best) if stored.diagnosed else (None, None)
    config.source = {
        "study": study.study_name,
        "trial": best.number,
        "value": validation_elbo(best),
        "rate": rate,
        "distortion": distortion,
        "params": best.params,
    }
    return config.model_dump(mode="json")
