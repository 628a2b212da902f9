"""Studies: check everything, then create or open a vae-tune study in its storage.

All checks (spec, sampler/pruner options, grid, device, data) happen in `prepare`, before the
database is touched, so a bad spec never leaves a half-made study behind. A vae-tune study is
recognised by its marker attribute; a plain Optuna study of the same name is refused. Running
trials is the job of `vae_tune.runner`.
"""

from __future__ import annotations

import difflib
import statistics
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.trial import FrozenTrial, TrialState

from vae_tune.data import Splits, load_splits
from vae_tune.errors import UserError
from vae_tune.models.registry import build_model, resolve
from vae_tune.training.hardware import resolve_precision, resolve_precisions
from vae_tune.training.trainer import resolve_device
from vae_tune.tuning.objective import TIME_PARTS
from vae_tune.tuning.record import read, validation_elbo
from vae_tune.tuning.samplers import CostAwareSampler, build_pruner, build_sampler
from vae_tune.tuning.search_space import grid_points
from vae_tune.tuning.spec import StudySpec
from vae_tune.tuning.storage import Heartbeat, mask_url, open_storage, use_heartbeat
from vae_tune.version import __version__

MARKER_ATTR = "vae_tune_version"  # study user attr: made by vae-tune (which version)
HEARTBEAT_ATTR = "heartbeat"
SPEC_ATTR = "spec"


# spec objective -> (Optuna directions, metric names, what the study optimizes in words)
OBJECTIVES = {
    "elbo": (
        ["maximize"],
        ["validation ELBO (nats/example)"],
        "validation ELBO at beta=1, nats per example (maximize)",
    ),
    "rate_distortion": (
        ["minimize", "minimize"],
        ["rate: KL (nats/example)", "distortion: -E[log p(x|z)] (nats/example)"],
        "validation rate (KL) and distortion (-E[log p(x|z)]), nats per example (minimize "
        "both: a Pareto front)",
    ),
}


@dataclass
class Prepared:
    """A validated spec with everything built from it: what a worker needs to run trials."""

    spec: StudySpec
    sampler: optuna.samplers.BaseSampler
    pruner: optuna.pruners.BasePruner
    grid: list[dict[str, Any]] | None
    splits: Splits


def prepare(spec: StudySpec, echo: Callable[[str], None] | None = None) -> Prepared:
    """Build every object a study needs and load its data; raises UserError on bad input.
    `echo` hears of slow first-time work (the precision probes)."""
    sampler = build_sampler(
        spec.sampler.name, spec.sampler.options, spec.seed, spec.budget.n_trials
    )
    if spec.cost_aware:
        sampler = CostAwareSampler(
            sampler, epochs=spec.training.epochs, trial_seconds=spec.budget.trial_seconds
        )
    pruner = build_pruner(spec.pruner)
    grid = grid_points(spec.search_space) if spec.sampler.name == "grid" else None
    # an explicit bf16 this CPU cannot run is refused here, and the bf16 probe's reading is
    # taken once, before worker processes start (they inherit it)
    device = resolve_device(spec.training.device)
    resolve_precision(spec.training.precision, device)
    splits = load_splits(spec.dataset, spec.seed, spec.likelihood.name)
    # `auto`: each architecture's own precision, probed once per machine (cached on disk)
    # here, before worker processes start, so two workers do not probe at once
    architectures = spec.search_space.architecture.values()
    resolve_precisions(spec.training.precision, device, architectures, splits.image_shape, echo)
    for arch in spec.search_space.architecture.values():
        if resolve(arch).origin != "shipped":  # the user's shapes, checked before any trial
            build_model({"architecture": arch}, splits.image_shape)
    return Prepared(spec, sampler, pruner, grid, splits)


def stored_spec(spec: StudySpec) -> dict[str, Any]:
    """The spec as kept on the study for workers and readers: credentials masked."""
    dump = spec.model_dump(mode="json")
    dump["storage"] = mask_url(spec.storage)
    return dump


def study_heartbeat(study: optuna.Study, overrides: dict[str, int] | None = None) -> Heartbeat:
    """The study's heartbeat settings (defaults if none stored), with `overrides` applied."""
    stored = study.user_attrs.get(HEARTBEAT_ATTR) or {}
    return Heartbeat.from_dict({**stored, **(overrides or {})})


def require_vae_tune(study: optuna.Study) -> optuna.Study:
    """Refuse a study that vae-tune did not make (a plain Optuna study of the same name): its
    trials carry no configs to export or train, and appending ours would mix two studies."""
    if MARKER_ATTR not in study.user_attrs:
        raise UserError(
            f"study {study.study_name!r} exists in this storage but was not made by vae-tune "
            f"(it has no {MARKER_ATTR!r} attribute): choose another study name",
            "study_name",
        )
    return study


def load_vae_study(
    study_name: str,
    storage_url: str,
    storage: optuna.storages.BaseStorage | None = None,
    prepared: Prepared | None = None,
    hint: str = "",
) -> optuna.Study:
    """Load an existing vae-tune study: exit 2 if there is none of that name, or a foreign one.
    Without `storage` it is opened read-only: readers never create a database."""
    storage = storage or open_storage(storage_url, must_exist=True)
    try:
        study = optuna.load_study(
            study_name=study_name,
            storage=storage,
            sampler=prepared.sampler if prepared else None,
            pruner=prepared.pruner if prepared else None,
        )
    except KeyError:
        close = difflib.get_close_matches(study_name, optuna.get_all_study_names(storage), n=1)
        maybe = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(
            f"no study named {study_name!r} in {mask_url(storage_url)}{maybe}{hint}",
            "study_name",
        ) from None
    return require_vae_tune(study)


def open_study(
    prepared: Prepared,
    storage: optuna.storages.RDBStorage,
    heartbeat: dict[str, int] | None = None,
) -> optuna.Study:
    """Create the study, or load it if it exists (so running a spec again resumes it).
    Call with the study lock held, so that a concurrent `run` sees a study with its marker.

    The spec (credentials masked) and the heartbeat settings are written on the study every
    time: workers that join follow the latest `run`.
    """
    spec = prepared.spec
    directions, names, described = OBJECTIVES[spec.objective]
    if spec.study_name in optuna.get_all_study_names(storage):
        study = load_vae_study(spec.study_name, spec.storage, storage, prepared)
        if [d.name.lower() for d in study.directions] != directions:
            raise UserError(
                f"study {spec.study_name!r} exists with another objective than "
                f"{spec.objective!r} ({study.user_attrs.get('objective', '?')}): choose another "
                "study name",
                "objective",
            )
    else:
        study = optuna.create_study(
            storage=storage,
            study_name=spec.study_name,
            sampler=prepared.sampler,
            pruner=prepared.pruner,
            directions=directions,
        )
        study.set_user_attr(MARKER_ATTR, __version__)  # makes it self-describing, and ours
        with warnings.catch_warnings():  # "experimental" since Optuna 3.2
            warnings.simplefilter("ignore", ExperimentalWarning)
            study.set_metric_names(names)
        study.set_user_attr("objective", described)
    beat = study_heartbeat(study, heartbeat)
    use_heartbeat(storage, beat)
    study.set_user_attr(SPEC_ATTR, stored_spec(spec))
    study.set_user_attr(HEARTBEAT_ATTR, beat.to_dict())
    return study


def best_trial(study: optuna.Study) -> FrozenTrial:
    """The complete trial with the best validation ELBO; for a rate–distortion study (two
    objectives, no single best) the point of its front with the highest ELBO."""
    if len(study.directions) == 1:
        return study.best_trial
    front = study.best_trials
    if not front:
        raise ValueError("no complete trial")
    return max(front, key=validation_elbo)


# the `queued` user attr of a study's baseline trial (vae_tune.tuning.warm_start)
BASELINE = "baseline"


def baseline_trial(study: optuna.Study) -> FrozenTrial | None:
    """The study's baseline trial (the knobs' defaults) if it completed."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return next((t for t in done if read(t).queued == BASELINE), None)


def baseline_summary(study: optuna.Study) -> str | None:
    """One line on the baseline trial and what tuning gained over it (None: no baseline ran,
    or two objectives, which have no single best)."""
    base = baseline_trial(study)
    if base is None or len(study.directions) > 1:
        return None
    value = validation_elbo(base)
    gain = validation_elbo(best_trial(study)) - value
    said = f"tuning gained {gain:.3f} nats" if gain > 0 else "tuning has not beaten it yet"
    return (
        f"Baseline (the knobs' defaults): trial {base.number}, validation ELBO {value:.3f}; {said}"
    )


def time_summary(study: optuna.Study) -> str | None:
    """One line on where the finished trials' wall time went, and the median fixed cost of a
    trial (the rest: sampling, model set-up, storage writes, checkpoints); None before any
    trial has timed itself."""
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    timed = [s for s in (read(t).seconds for t in finished) if s is not None]
    total = sum(s["trial"] for s in timed)
    if not total:
        return None
    shares = ", ".join(
        f"{name} {sum(s.get(part, 0.0) for s in timed) / total:.0%}"
        for part, name in TIME_PARTS.items()
    )
    rest = statistics.median(s["other"] for s in timed)
    return (
        f"Trial time ({total:.0f} s in {len(timed)} trials): {shares}; "
        f"the rest is {rest:.3f} s per trial (median)"
    )


def counts(study: optuna.Study) -> dict[str, int]:
    states = Counter(t.state.name for t in study.get_trials(deepcopy=False))
    return {s.name: states.get(s.name, 0) for s in TrialState}


def study_rows(
    storage_url: str, status: Callable[[optuna.Study], str] | None = None
) -> list[dict[str, Any]]:
    """One row per study in a storage (read only): trials by state, the best validation ELBO
    and its architecture (two-objective studies: also the Pareto front's trials), whether
    vae-tune made it, and `status(study)` (open, running, finished: the runner knows)."""
    storage = open_storage(storage_url, must_exist=True)
    rows = []
    try:
        for summary in optuna.get_all_study_summaries(storage, include_best_trial=True):
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            ours = MARKER_ATTR in summary.user_attrs
            try:
                best = best_trial(study) if ours else None
            except ValueError:
                best = None
            model = read(best).model if best else {}
            started = summary.datetime_start
            multi = len(summary.directions) > 1
            rows.append(
                {
                    "study": summary.study_name,
                    "vae_tune": ours,
                    "objective": "rate_distortion" if multi else "elbo",
                    "trials": {k.lower(): v for k, v in counts(study).items()},
                    "best_value": validation_elbo(best) if best else None,
                    "best_trial": best.number if best else None,
                    "best_architecture": model.get("architecture"),
                    "pareto_front": [t.number for t in study.best_trials] if multi else None,
                    "started": started.isoformat(timespec="seconds") if started else None,
                    "status": status(study) if status and ours else None,
                }
            )
    finally:
        storage.close()
    return rows
