"""Where the search space is defined for Optuna: spec parameters -> trial suggestions -> config.

Top-level hyperparameters are named as in the spec (`latent_dim`, `beta`, ...); architecture
knobs are conditional and named `<architecture>_<knob>` (e.g. `mlp_hidden_dim`), so only the
sampled architecture's knobs exist in a trial. Fixed values are never suggested.
"""

from __future__ import annotations

import itertools
from typing import Any

import optuna

from vae_tune.errors import SpecError
from vae_tune.seeds import derive
from vae_tune.training.config import MODEL_KNOBS, TRAINING_KNOBS, RunConfig, RunSettings
from vae_tune.tuning.spec import Param, SearchSpace, StudySpec

# the hyperparameters every trial has, named as in the spec; derived from the typed configs
TOP_LEVEL = ("architecture", *MODEL_KNOBS, *TRAINING_KNOBS)


def _suggest(trial: optuna.Trial, name: str, p: Param) -> Any:
    kind = p.kind
    if kind == "fixed":
        return p.value
    if kind == "categorical":
        return trial.suggest_categorical(name, p.choices)
    if kind == "int":
        return trial.suggest_int(name, p.low, p.high, step=p.step or 1, log=p.log)
    return trial.suggest_float(name, p.low, p.high, step=p.step, log=p.log)


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """Sample one point: `{name: value}` for every hyperparameter, fixed ones included."""
    values = {name: _suggest(trial, name, getattr(space, name)) for name in TOP_LEVEL}
    arch = values["architecture"]
    for knob, p in space.knobs(arch).items():
        values[knob_name(arch, knob)] = _suggest(trial, knob_name(arch, knob), p)
    return values


def grid_points(space: SearchSpace) -> list[dict[str, Any]]:
    """Every distinct point of the grid, as Optuna params (searched parameters only).

    Knobs of an architecture are crossed only with that architecture, so inactive
    conditional parameters never multiply the grid.
    """
    # (Optuna name, searched?, grid values): knobs keep their Param, names are never split
    searched: list[tuple[str, bool, list[Any]]] = []
    for name in TOP_LEVEL:
        if name != "architecture":
            p = getattr(space, name)
            searched.append((name, p.kind != "fixed", _grid(name, p)))
    points = []
    for arch in _grid("architecture", space.architecture):
        knobs = [
            (knob_name(arch, k), p.kind != "fixed", _grid(f"{arch}.{k}", p))
            for k, p in space.knobs(arch).items()
        ]
        dims = searched + knobs
        if space.architecture.kind != "fixed":
            dims = [("architecture", True, [arch])] + dims
        for combo in itertools.product(*(vals for _, _, vals in dims)):
            point = {
                name: value
                for (name, is_searched, _), value in zip(dims, combo, strict=True)
                if is_searched
            }
            points.append(point)
    unique = {tuple(sorted(p.items())): p for p in points}
    return list(unique.values())


def _grid(path: str, p: Param) -> list[Any]:
    values = p.grid_values()
    if values is None:
        raise SpecError(
            "a range needs `grid` values to run with the grid sampler", f"search_space.{path}.grid"
        )
    return values


def knob_name(architecture: str, knob: str) -> str:
    """The Optuna parameter of an architecture's knob (conditional: exists only in trials of
    that architecture). Never split again: the config name comes from the space."""
    return f"{architecture}_{knob}"


def run_config(spec: StudySpec, values: dict[str, Any], trial_number: int = 0) -> RunConfig:
    """The full training config of one trial: spec settings plus the sampled values."""
    arch = values["architecture"]
    model = {"architecture": arch, **{k: values[k] for k in MODEL_KNOBS}}
    for knob in spec.search_space.knobs(arch):
        model[knob] = values[knob_name(arch, knob)]
    settings = spec.training.model_dump(include=set(RunSettings.model_fields))
    user = {arch: spec.architectures[arch]} if arch in spec.architectures else {}
    return RunConfig(
        dataset=spec.dataset,
        model=model,
        architectures=user,
        **{k: values[k] for k in TRAINING_KNOBS},
        likelihood=spec.likelihood,
        seed=derive(spec.seed, "trial", trial_number),
        data_seed=spec.seed,
        **settings,
    )
