"""Warm starts: queue known configs (exported files, another study's best trials) first, and
a new study's baseline: the knobs' defaults, moved into its search space.

A config becomes the Optuna params of this spec's search space; one that lies outside it is
skipped with the parameter and the reason. Points are queued with `skip_if_exists`, under the
study lock, so a point already queued or run in the study is never run twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from vae_tune.errors import UserError
from vae_tune.models import parse_config
from vae_tune.training.config import MODEL_KNOBS, RunConfig, read_yaml, validate
from vae_tune.tuning.record import queued_as, read, validation_elbo
from vae_tune.tuning.search_space import TOP_LEVEL, knob_name
from vae_tune.tuning.spec import Param, SearchSpace
from vae_tune.tuning.storage import open_storage
from vae_tune.tuning.study import BASELINE, load_vae_study


@dataclass(frozen=True)
class WarmStart:
    """What `run --enqueue FILE ... --warm-start STUDY[:TOP_K] --warm-start-storage URL` asks."""

    files: tuple[Path, ...] = ()
    study: str | None = None
    storage: str | None = None  # default: the study's own storage

    def gather(self, storage_url: str) -> list[Known]:
        """Read every known config before anything is written (bad input exits 2)."""
        if self.storage is not None and self.study is None:
            raise UserError("--warm-start-storage needs --warm-start STUDY", "warm_start_storage")
        known = from_files(list(self.files))
        if self.study is not None:
            name, k = parse_warm_start(self.study)
            known += from_study(name, self.storage or storage_url, k)
        return known


@dataclass(frozen=True)
class Known:
    """A config to queue, and where it came from (for the lines the run prints)."""

    label: str
    config: RunConfig


def parse_warm_start(text: str) -> tuple[str, int]:
    """`STUDY` or `STUDY:TOP_K` (a study name may itself contain colons)."""
    name, sep, k = text.rpartition(":")
    if sep and k.isdigit():
        if int(k) < 1:
            raise UserError(f"--warm-start {text!r}: TOP_K must be at least 1", "warm_start")
        return name, int(k)
    return text, 1


def from_files(paths: list[Path]) -> list[Known]:
    """Run configs from files (export-best writes them); a bad file exits 2 naming it."""
    known = []
    for path in paths:
        data, found = read_yaml(path)
        known.append(Known(str(found), validate(RunConfig, data, f"--enqueue {found}")))
    return known


def from_study(study_name: str, storage_url: str, top_k: int) -> list[Known]:
    """The `top_k` complete trials of a vae-tune study, best validation ELBO first."""
    storage = open_storage(storage_url, must_exist=True)
    try:
        study = load_vae_study(study_name, storage_url, storage)
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    finally:
        storage.close()
    ranked = sorted((t for t in done if read(t).config is not None), key=validation_elbo)
    return [
        Known(f"trial {t.number} of {study_name!r}", RunConfig.model_validate(read(t).config))
        for t in ranked[::-1][:top_k]
    ]


class OutsideSpace(ValueError):
    """A known config has a value this spec's search space does not allow."""


def _searched(config: RunConfig, space: SearchSpace) -> dict[str, tuple[Param, Any]]:
    """Each Optuna parameter of `space`, with the config's value for it."""
    arch, model = parse_config(config.model)  # knobs a config predates take their defaults
    values = {"architecture": arch, **{k: getattr(model, k) for k in MODEL_KNOBS}}
    values.update({k: getattr(config, k) for k in TOP_LEVEL if k not in values})
    params = {name: getattr(space, name) for name in TOP_LEVEL}
    if space.architecture.why_not(arch) is None:
        params.update({knob_name(arch, k): p for k, p in space.knobs(arch).items()})
        values.update({knob_name(arch, k): getattr(model, k) for k in space.knobs(arch)})
    return {name: (param, values[name]) for name, param in params.items()}


def _as_param(param: Param, value: Any) -> Any:
    return float(value) if param.kind == "float" else int(value) if param.kind == "int" else value


def point(config: RunConfig, space: SearchSpace) -> dict[str, Any]:
    """The config as the Optuna params of `space` (searched parameters only)."""
    found: dict[str, Any] = {}
    for name, (param, value) in _searched(config, space).items():
        why = param.why_not(value)
        if why is not None:
            raise OutsideSpace(f"{name} = {value!r} {why}")
        if param.kind != "fixed":
            found[name] = _as_param(param, value)
    return found


def baseline_point(space: SearchSpace) -> dict[str, Any]:
    """The knobs' defaults (the pytorch/examples VAE at beta = 1), each moved to the nearest
    value `space` allows; a categorical without its default is left to the sampler."""
    archs = space.architecture.values()
    default = RunConfig().model["architecture"]
    config = RunConfig(model={"architecture": default if default in archs else archs[0]})
    found: dict[str, Any] = {}
    for name, (param, value) in _searched(config, space).items():
        near = param.nearest(value)
        if param.kind != "fixed" and near is not None:
            found[name] = _as_param(param, near)
    return found


def enqueue_known(study: optuna.Study, space: SearchSpace, known: list[Known]) -> list[str]:
    """Queue each known config that fits the space (call under the study lock); return one
    line per config saying what happened to it."""
    lines = []
    for item in known:
        try:
            params = point(item.config, space)
        except OutsideSpace as why:
            lines.append(f"warm start: skipped {item.label}: {why}")
            continue
        before = len(study.get_trials(deepcopy=False))
        study.enqueue_trial(params, skip_if_exists=True)  # Optuna's own check of the point
        if len(study.get_trials(deepcopy=False)) == before:
            lines.append(f"warm start: {item.label} is already in the study; not queued again")
        else:
            lines.append(f"warm start: queued {item.label}")
    return lines


def enqueue_baseline(study: optuna.Study, space: SearchSpace) -> str:
    """Queue a new study's baseline trial (call under the study lock); return the line saying
    so."""
    params = baseline_point(space)
    study.enqueue_trial(params, user_attrs=queued_as(BASELINE), skip_if_exists=True)
    shown = ", ".join(f"{k} {v}" for k, v in params.items())
    return f"baseline: queued the knobs' defaults before any sampled trial ({shown})"
