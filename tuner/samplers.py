"""Samplers and pruners as plain Optuna objects built from names (and options) in the spec."""

from __future__ import annotations

import warnings
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler

from tuner.errors import SpecError
from tuner.spec import PrunerSpec, SamplerSpec


def _sampler_class(name: str) -> Any:
    s = optuna.samplers
    return {
        # grid points are enqueued as trials (see study.enqueue_grid); the sampler never draws
        "grid": s.RandomSampler,
        "random": s.RandomSampler,
        "tpe": s.TPESampler,
        "gp": s.GPSampler,
        "cmaes": s.CmaEsSampler,
        "qmc": s.QMCSampler,
    }[name]


def build_sampler(spec: SamplerSpec, seed: int) -> BaseSampler:
    options = dict(spec.options)
    if spec.name in ("cmaes", "qmc", "gp"):
        # conditional knobs and categoricals fall back to independent sampling by design
        options.setdefault("warn_independent_sampling", False)
    try:
        with warnings.catch_warnings():  # QMC is marked experimental; we choose it knowingly
            warnings.simplefilter("ignore", ExperimentalWarning)
            return _sampler_class(spec.name)(seed=seed, **options)
    except (TypeError, ValueError) as err:
        raise SpecError(
            f"bad options for sampler {spec.name!r}: {err}", "sampler.options"
        ) from None


_PRUNERS = {
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "patient": optuna.pruners.PatientPruner,
    "none": optuna.pruners.NopPruner,
}


def build_pruner(spec: PrunerSpec, field: str = "pruner") -> BasePruner:
    options = dict(spec.options)
    if spec.wrapped is not None and spec.name != "patient":
        raise SpecError("only the patient pruner wraps another pruner", f"{field}.wrapped")
    if spec.name == "patient":
        wrapped = build_pruner(spec.wrapped, f"{field}.wrapped") if spec.wrapped else None
        options.setdefault("patience", 2)
        options["wrapped_pruner"] = wrapped
    if spec.name == "percentile":
        options.setdefault("percentile", 25.0)
    try:
        with warnings.catch_warnings():  # PatientPruner is marked experimental
            warnings.simplefilter("ignore", ExperimentalWarning)
            return _PRUNERS[spec.name](**options)
    except (TypeError, ValueError) as err:
        raise SpecError(
            f"bad options for pruner {spec.name!r}: {err}", f"{field}.options"
        ) from None
