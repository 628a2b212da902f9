"""Samplers and pruners by name: plain Optuna objects, their options checked before use.

The names here are the only list of samplers and pruners; the spec takes its choices from them.
Options are checked against the Optuna class's own signature and type hints, so
`n_startup_trials: "abc"` is refused as `sampler.options.n_startup_trials` before anything is
written, instead of failing every trial later.
"""

from __future__ import annotations

import collections.abc
import inspect
import math
import statistics
import typing
import warnings
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.exceptions import ExperimentalWarning
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState
from pydantic import ConfigDict, TypeAdapter, ValidationError

from vae_tune.errors import SpecError
from vae_tune.seeds import derive, text_id
from vae_tune.tuning import record
from vae_tune.tuning.curve_pruner import LearningCurvePruner

_s, _p = optuna.samplers, optuna.pruners
SAMPLER_CLASSES: dict[str, type[BaseSampler]] = {
    # grid points are enqueued as trials (see study.enqueue_grid); the sampler never draws
    "grid": _s.RandomSampler,
    "random": _s.RandomSampler,
    "tpe": _s.TPESampler,
    "gp": _s.GPSampler,
    "cmaes": _s.CmaEsSampler,
    "qmc": _s.QMCSampler,
}
PRUNER_CLASSES: dict[str, type[BasePruner]] = {
    "median": _p.MedianPruner,
    "curve": LearningCurvePruner,
    "percentile": _p.PercentilePruner,
    "successive_halving": _p.SuccessiveHalvingPruner,
    "hyperband": _p.HyperbandPruner,
    "patient": _p.PatientPruner,
    "none": _p.NopPruner,
}
SAMPLERS = tuple(SAMPLER_CLASSES)
PRUNERS = tuple(PRUNER_CLASSES)
# names Optuna's annotations use but import only for type checkers
_HINT_NAMES = {**vars(collections.abc), "FrozenTrial": FrozenTrial, "Study": Study, "np": np}


def checked_options(cls: type, options: dict[str, Any], field: str) -> dict[str, Any]:
    """`options` validated (and coerced, e.g. "5" -> 5) against `cls`'s constructor; a bad
    name or type raises SpecError naming `field.option`."""
    params = inspect.signature(cls).parameters
    try:
        hints = typing.get_type_hints(cls.__init__, localns=_HINT_NAMES)
    except Exception:  # noqa: BLE001 - an annotation we cannot resolve: construction checks it
        hints = {}
    checked = {}
    for name, value in options.items():
        if name not in params or name in ("self", "seed"):
            known = ", ".join(p for p in params if p not in ("self", "seed"))
            raise SpecError(f"unknown option of {cls.__name__}; known: {known}", f"{field}.{name}")
        checked[name] = value
        if name in hints:
            adapter = TypeAdapter(hints[name], config=ConfigDict(arbitrary_types_allowed=True))
            try:
                checked[name] = adapter.validate_python(value)
            except ValidationError as err:
                message = err.errors()[0]["msg"]
                raise SpecError(f"{message}, got {value!r}", f"{field}.{name}") from None
    return checked


def _construct(cls: type, options: dict[str, Any], field: str) -> Any:
    try:
        with warnings.catch_warnings():  # QMC, PatientPruner, multivariate TPE: "experimental"
            warnings.simplefilter("ignore", ExperimentalWarning)
            return cls(**options)
    except (TypeError, ValueError) as err:
        raise SpecError(f"bad options for {cls.__name__}: {err}", field) from None


class WrappingSampler(BaseSampler):
    """A sampler that hands every call to the sampler it wraps (`self._inner`); subclasses
    override the calls they change."""

    def __init__(self, inner: BaseSampler):
        self._inner = inner

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: collections.abc.Sequence[float] | None,
    ) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()

    def __str__(self) -> str:
        return str(self._inner)


class TrialSeededSampler(WrappingSampler):
    """Draw trial n of study S with a sampler seeded from (spec seed, S, n).

    An Optuna sampler seeded once per process redraws the same sequence in every process:
    each resumed `vae-tune run` and each concurrent one would repeat the points the first run
    tried. Seeding by trial number keeps a study reproducible while every trial, in whichever
    process, draws its own numbers; the history the sampler learns from is the study's. The
    study name is in the seed too, so a study warm-started from another with the same spec
    seed does not redraw that study's points.
    """

    def __init__(self, make: Callable[[int], BaseSampler], seed: int):
        super().__init__(make(seed))
        self._make = make
        self._seed = seed

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        study_id = text_id(study.study_name)
        self._inner = self._make(derive(self._seed, "sampler", study_id, trial.number))
        self._inner.before_trial(study, trial)


class CostAwareSampler(WrappingSampler):
    """Pick each trial's architecture by expected improvement per second of training.

    Architectures differ up to 20x in seconds per epoch, and a sampler that counts trials
    treats a 100 s conv trial like a 10 s MLP one. This wraps any single-objective sampler
    (`base`): where the base sampler draws `param` (the architecture), its draw is kept, or
    the same draw with another architecture where that one scores better, by

        EI_a / cost_a

    EI_a: the expected improvement over the study's best value of a normal fitted to a's
    finished trials (completed: their value; pruned: their last reported value), shrunk
    towards all trials' mean and spread by one pseudo-trial, so an architecture with no trials
    keeps the whole study's (optimistic) spread and is still explored. cost_a: the training
    seconds a trial of a takes to finish (the median seconds per epoch its trials recorded x
    `epochs`, at most `trial_seconds`); an architecture with no trials gets the median of all.
    Before any trial has recorded a cost the base sampler's draw is kept. The other knobs are
    the base sampler's draw either way (an architecture's own knobs are drawn once it is
    chosen). So the architecture is a bandit arm chosen by improvement per second, and TPE (or
    any base sampler) tunes the knobs. Only Optuna's public sampler interface is used.
    """

    def __init__(
        self,
        base: BaseSampler,
        *,
        param: str = "architecture",
        epochs: int | None = None,
        trial_seconds: float | None = None,
    ):
        super().__init__(base)
        self._param = param
        self._epochs = epochs
        self._trial_seconds = trial_seconds

    def scores(self, study: Study) -> dict[Any, float] | None:
        """Each architecture's EI / cost, from the study's finished trials (None: no costs)."""
        sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
        rows = []  # (architecture, value, seconds per epoch)
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            if self._param not in t.params:
                continue
            if t.state == TrialState.COMPLETE:
                value = t.value
            elif t.intermediate_values:
                value = t.intermediate_values[max(t.intermediate_values)]
            else:
                continue
            spe = record.read(t).seconds_per_epoch
            if value is None or not math.isfinite(value):
                continue
            rows.append((t.params[self._param], sign * value, spe))
        costs = [c for _, _, c in rows if c]
        if not costs:
            return None
        values = [v for _, v, _ in rows]
        best, mean_all = max(values), statistics.fmean(values)
        spread = statistics.pstdev(values) if len(values) > 1 else 0.0
        spread = max(spread, 1e-3 * (1.0 + abs(mean_all)))
        typical = statistics.median(costs)
        arms: dict[Any, list[tuple[float, float | None]]] = {}
        for arch, v, c in rows:
            arms.setdefault(arch, []).append((v, c))
        out: dict[Any, float] = {}
        for arch in {*arms, None}:
            mine = arms.get(arch, [])
            n = len(mine)
            mu = (sum(v for v, _ in mine) + mean_all) / (n + 1)
            var = (sum((v - mu) ** 2 for v, _ in mine) + spread**2) / (n + 1)
            ei = _expected_improvement(mu, math.sqrt(var), best)
            spes = [c for _, c in mine if c]
            cost = statistics.median(spes) if spes else typical
            if self._epochs:
                cost *= self._epochs
            if self._trial_seconds:
                cost = min(cost, self._trial_seconds)
            out[arch] = ei / max(cost, 1e-9)
        return out

    def _pick(
        self,
        study: Study,
        draw: Any,
        value_of: Callable[[Any], Any],
        replace: Callable[[Any, Any], Any],
        choices: collections.abc.Sequence[Any],
    ) -> Any:
        """The base sampler's draw, or that draw with another architecture where that one
        scores better: a sampler that has settled on one architecture (TPE does within a few
        trials) never draws the others, so they are offered beside its draw."""
        scores = self.scores(study)
        if scores is None:
            return draw
        mine = value_of(draw)
        candidates = [draw, *(replace(draw, c) for c in choices if c != mine)]

        def score(candidate: Any) -> float:
            return scores.get(value_of(candidate), scores[None])

        return max(candidates, key=score)  # the first of equals: the base sampler's own draw

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        point = self._inner.sample_relative(study, trial, search_space)
        dist = search_space.get(self._param)
        if self._param not in point or not isinstance(dist, CategoricalDistribution):
            return point
        return self._pick(
            study,
            point,
            lambda p: p.get(self._param),
            lambda p, c: {**p, self._param: c},
            dist.choices,
        )

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        value = self._inner.sample_independent(study, trial, param_name, param_distribution)
        if param_name != self._param or not isinstance(param_distribution, CategoricalDistribution):
            return value
        return self._pick(
            study, value, lambda v: v, lambda _v, c: c, param_distribution.choices
        )

    def __str__(self) -> str:
        return f"cost-aware {self._inner}"


def _expected_improvement(mu: float, sigma: float, best: float) -> float:
    """E[max(0, V - best)] for V ~ N(mu, sigma^2) (maximizing), floored above zero."""
    z = (mu - best) / sigma
    pdf = math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    if z < -5:  # pdf + z cdf cancels: the Mills-ratio expansion instead
        return max(sigma * pdf / (z * z) * (1 - 3 / (z * z)), 1e-300)
    cdf = 0.5 * math.erfc(-z / math.sqrt(2))
    return max(sigma * (pdf + z * cdf), 1e-300)


# samplers the cost-aware choice wraps under `cost_aware: auto` (grid is a design, and QMC's
# low-discrepancy sequence would lose its spread if draws were dropped)
COST_AWARE_SAMPLERS = ("tpe", "random", "gp", "cmaes")


def tpe_defaults(n_trials: int | None) -> dict[str, Any]:
    """TPE set up for vae-tune's spaces: conditional (architecture knobs exist only for their
    architecture) and mixed. `multivariate` + `group` model the parameters jointly within
    each architecture's sub-space instead of one at a time; `constant_liar` makes concurrent
    workers avoid the points running trials are trying; start-up trials sized to the budget
    (a quarter of it, 4 to 10) leave most of a short study to the model."""
    startup = 10 if n_trials is None else min(10, max(4, n_trials // 4))
    return {
        "multivariate": True,
        "group": True,
        "constant_liar": True,
        "n_startup_trials": startup,
    }


def build_sampler(
    name: str, options: dict[str, Any], seed: int, n_trials: int | None = None
) -> BaseSampler:
    """The named sampler with checked options (TPE: `tpe_defaults` for what they leave out),
    seeded per trial from `seed` (QMC keeps one seed: its low-discrepancy sequence is one
    scrambled sequence, continued across runs)."""
    cls = SAMPLER_CLASSES[name]
    options = checked_options(cls, options, "sampler.options")
    if name == "tpe":
        options = {**tpe_defaults(n_trials), **options}
    if name in ("cmaes", "qmc", "gp"):
        # conditional knobs and categoricals fall back to independent sampling by design
        options.setdefault("warn_independent_sampling", False)

    def make(trial_seed: int) -> BaseSampler:
        return _construct(cls, {**options, "seed": trial_seed}, "sampler.options")

    return make(seed) if name == "qmc" else TrialSeededSampler(make, seed)


class PrunerChoice(Protocol):
    """A pruner as the spec names it (`vae_tune.tuning.spec.PrunerSpec`)."""

    name: str
    options: dict[str, Any]
    wrapped: PrunerChoice | None


def build_pruner(choice: PrunerChoice, field: str = "pruner") -> BasePruner:
    """The named pruner with checked options (`patient` wraps `choice.wrapped`)."""
    cls = PRUNER_CLASSES[choice.name]
    options = checked_options(cls, dict(choice.options), f"{field}.options")
    if choice.wrapped is not None and choice.name != "patient":
        raise SpecError("only the patient pruner wraps another pruner", f"{field}.wrapped")
    if choice.name == "patient":
        wrapped = choice.wrapped
        options.setdefault("patience", 2)
        options["wrapped_pruner"] = build_pruner(wrapped, f"{field}.wrapped") if wrapped else None
    if choice.name == "percentile":
        options.setdefault("percentile", 25.0)
    return _construct(cls, options, f"{field}.options")
