"""The study driver: validate everything, then create or resume the study and run trials.

All checks (spec, sampler/pruner options, grid, device, data) happen in `prepare`, before the
database is touched, so a bad spec never leaves a half-made study behind.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner import __version__
from tuner.datasets import Splits, load_splits
from tuner.errors import SpecError
from tuner.objective import Objective
from tuner.samplers import build_pruner, build_sampler
from tuner.search_space import grid_points
from tuner.spec import StudySpec
from tuner.storage import open_storage
from tuner.train import resolve_device

DEFAULT_N_TRIALS = 20
Callback = Callable[[optuna.Study, FrozenTrial], None]


@dataclass
class Prepared:
    spec: StudySpec
    sampler: optuna.samplers.BaseSampler
    pruner: optuna.pruners.BasePruner
    grid: list[dict[str, Any]] | None
    splits: Splits


def prepare(spec: StudySpec) -> Prepared:
    """Build every object a study needs and load its data; raises UserError on bad input."""
    sampler = build_sampler(spec.sampler, spec.seed)
    pruner = build_pruner(spec.pruner)
    grid = grid_points(spec.search_space) if spec.sampler.name == "grid" else None
    resolve_device(spec.training.device)
    splits = load_splits(spec.dataset, spec.seed)
    return Prepared(spec, sampler, pruner, grid, splits)


def open_study(prepared: Prepared) -> optuna.Study:
    """Create the study, or load it if it exists (so running a spec again resumes it)."""
    spec = prepared.spec
    study = optuna.create_study(
        storage=open_storage(spec.storage),
        study_name=spec.study_name,
        sampler=prepared.sampler,
        pruner=prepared.pruner,
        direction="maximize",
        load_if_exists=True,
    )
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise SpecError("an existing study of that name is not a vae-tune study", "study_name")
    if "spec" not in study.user_attrs:  # new study: make it self-describing
        study.set_user_attr("spec", spec.model_dump(mode="json"))
        study.set_user_attr("vae_tune_version", __version__)
        study.set_user_attr("objective", "validation ELBO at beta=1, nats per example (maximize)")
    return study


def _point(trial: FrozenTrial) -> tuple:
    params = trial.system_attrs.get("fixed_params") or trial.params
    return tuple(sorted(params.items()))


def enqueue_grid(study: optuna.Study, points: Sequence[dict[str, Any]]) -> int:
    """Queue every grid point not yet covered (failed trials are retried); return how many
    points are still waiting to run."""
    covered = Counter(
        _point(t) for t in study.get_trials(deepcopy=False) if t.state != TrialState.FAIL
    )
    for point in points:
        if covered[tuple(sorted(point.items()))] == 0:
            study.enqueue_trial(point)
    return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def optimize(
    study: optuna.Study,
    prepared: Prepared,
    n_trials: int | None,
    timeout: float | None,
    callbacks: Sequence[Callback] = (),
) -> None:
    """Run trials in this process: `n_trials` more (default: the rest of the grid, or 20)."""
    if prepared.grid is not None:
        waiting = enqueue_grid(study, prepared.grid)
        n_trials = min(n_trials or waiting, waiting)
        if n_trials == 0:
            return
    elif n_trials is None and timeout is None:
        n_trials = DEFAULT_N_TRIALS
    study.optimize(
        Objective(prepared.spec, prepared.splits),
        n_trials=n_trials,
        timeout=timeout,
        callbacks=list(callbacks),
        catch=(Exception,),  # an unexpected error fails that trial; the study goes on
        gc_after_trial=False,
    )


def counts(study: optuna.Study) -> dict[str, int]:
    states = Counter(t.state.name for t in study.get_trials(deepcopy=False))
    return {s.name: states.get(s.name, 0) for s in TrialState}
