"""Study specs: what to search and how, as typed objects read from YAML.

A *study spec* (vae_tune/studies/*.yaml) names the search space, the data, the sampler, the
pruner and the budget; each trial resolves one point of it into a run config
(`vae_tune.training.config.RunConfig`). Validation errors name the field path
(``search_space.beta.low``) and happen before anything touches the database.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    create_model,
    model_validator,
)

from vae_tune.defaults import DEFAULT_STORAGE
from vae_tune.errors import SpecError
from vae_tune.models import config_class
from vae_tune.models.config import ModelConfig
from vae_tune.models.registry import SHIPPED, resolve
from vae_tune.training.config import (
    MODEL_KNOBS,
    TRAINING_KNOBS,
    DatasetSpec,
    LikelihoodSpec,
    RunSettings,
    Strict,
    TrainingKnobs,
    UsesArchitectures,
    check_architecture,
    check_fits_vectors,
    fit_data,
    free_bits_conflict,
    located_error,
    read_yaml,
    set_path,
    validate,
)
from vae_tune.tuning.samplers import COST_AWARE_SAMPLERS, PRUNERS, SAMPLERS

Scalar = bool | int | float | str
# Optuna's RDB storage keeps study names in a VARCHAR(512); control characters (newlines) would
# break every table and shell line that shows the name
MAX_STUDY_NAME = 512
StudyName = Annotated[
    str, Field(min_length=1, max_length=MAX_STUDY_NAME, pattern=r"^[^\x00-\x1f\x7f]+$")
]


class Param(Strict):
    """One hyperparameter: a fixed `value`, a `low`..`high` range, or a list of `choices`.

    `grid` lists the values `--sampler grid` enumerates (choices are their own grid).
    A bare scalar in YAML means a fixed value.
    """

    value: Scalar | None = None
    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    step: int | float | None = None
    choices: list[Scalar] | None = None
    grid: list[Scalar] | None = None

    @model_validator(mode="before")
    @classmethod
    def _scalar_is_fixed(cls, data: Any) -> Any:
        return {"value": data} if isinstance(data, (bool, int, float, str)) else data

    @model_validator(mode="after")
    def _consistent(self) -> Param:
        ranged = self.low is not None or self.high is not None
        forms = (self.value is not None) + ranged + (self.choices is not None)
        if forms != 1:
            raise located_error("", "give exactly one of: a fixed value, low/high, or choices")
        if ranged:
            if self.low is None or self.high is None:
                raise located_error(
                    "low" if self.low is None else "high", "a range needs both low and high"
                )
            if self.low > self.high:
                raise located_error("low", f"low ({self.low}) must be <= high ({self.high})")
            if self.log and self.low <= 0:
                raise located_error("low", f"log scale needs low > 0, got {self.low}")
            if self.log and self.step is not None:
                raise located_error("step", "step cannot be combined with log scale")
            for i, v in enumerate(self.grid or []):
                if isinstance(v, (bool, str)) or not self.low <= v <= self.high:
                    raise located_error(
                        f"grid.{i}", f"grid value {v!r} is outside [{self.low}, {self.high}]"
                    )
        elif self.choices is not None:
            if not self.choices:
                raise located_error("choices", "choices must not be empty")
            if self.grid is not None and any(v not in self.choices for v in self.grid):
                raise located_error("grid", "every grid value must be one of the choices")
        elif self.grid is not None:
            raise located_error("grid", "a fixed value has no grid")
        return self

    @property
    def kind(self) -> Literal["fixed", "int", "float", "categorical"]:
        if self.value is not None:
            return "fixed"
        if self.choices is not None:
            return "categorical"
        ints = all(isinstance(v, int) for v in (self.low, self.high, self.step or 1))
        return "int" if ints else "float"

    def values(self) -> list[Any]:
        """Every value this parameter can take: its domain for checks (ranges: the bounds)."""
        if self.value is not None:
            return [self.value]
        return list(self.choices) if self.choices is not None else [self.low, self.high]

    def why_not(self, v: Any) -> str | None:
        """Why `v` is not a value of this parameter (None: it is): for queuing known configs."""
        if self.kind == "fixed":
            same = v == self.value or (
                isinstance(v, int | float) and math.isclose(v, self.value, rel_tol=1e-9)
            )
            return None if same else f"is fixed at {self.value!r} in this spec"
        if self.kind == "categorical":
            return None if v in self.choices else f"is not one of {self.choices}"
        if isinstance(v, bool) or not isinstance(v, int | float):
            return "is not a number"
        if self.kind == "int" and v != int(v):
            return "is not an integer"
        if not self.low <= v <= self.high:
            return f"is outside [{self.low}, {self.high}]"
        steps = (v - self.low) / self.step if self.step else 0
        if abs(steps - round(steps)) > 1e-9:
            return f"is not on the step {self.step} from {self.low}"
        return None

    def nearest(self, v: Any) -> Any:
        """The value of this parameter nearest to `v` (None: a categorical without `v`), for
        moving a default into the space: ranges clip and round onto their step."""
        if self.kind == "fixed":
            return self.value
        if self.kind == "categorical":
            return v if v in self.choices else None
        if isinstance(v, bool) or not isinstance(v, int | float):
            return None
        v = min(max(v, self.low), self.high)
        step = self.step or (1 if self.kind == "int" else None)
        if step:
            v = self.low + round((v - self.low) / step) * step
            v = v if v <= self.high else v - step
        return int(round(v)) if self.kind == "int" else float(v)

    def grid_values(self) -> list[Any] | None:
        if self.value is not None:
            return [self.value]
        if self.grid is not None:
            return list(self.grid)
        return list(self.choices) if self.choices is not None else None


def _param(default: Any) -> Any:
    return Field(default_factory=lambda: Param.model_validate(default))


def _value_error(model: type[BaseModel], name: str, value: Any) -> str | None:
    """Why `value` is not a valid `name` of the typed config `model` (None: it is)."""
    if isinstance(value, bool) and model.model_fields[name].annotation is not bool:
        return f"expected a {name} value, got {value!r}"
    try:
        model.model_validate({name: value})
    except ValidationError as err:
        return f"{err.errors()[0]['msg'].removeprefix('Value error, ')}, got {value!r}"
    return None


def _check(path: str, param: Param, model: type[BaseModel], name: str) -> None:
    """Every value `param` can take (bounds, choices, grid) must be valid for the field."""
    if param.kind == "fixed":
        labelled = [("value", param.value)]
    elif param.kind == "categorical":
        labelled = [("choices", v) for v in param.choices or []]
    else:
        labelled = [("low", param.low), ("high", param.high)]
    labelled += [("grid", v) for v in param.grid or []]
    for label, value in labelled:
        problem = _value_error(model, name, value)
        if problem:
            raise located_error(f"{path}.{label}", problem)


_BLOCK = TypeAdapter(dict[str, Param])


class _SearchSpaceBase(Strict):
    """What a trial samples: every training and shared model knob, `architecture`, then one
    block of knobs per architecture (only the sampled architecture's block is active). The
    shipped architectures' blocks are fields; a user architecture's block is a key of its
    name, allowed once the name resolves (decorated, a plugin, or a reference)."""

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="before")
    @classmethod
    def _likelihood_is_not_searched(cls, data: Any) -> Any:
        for key in ("likelihood", "binarize"):
            if isinstance(data, dict) and key in data:
                raise located_error(
                    key,
                    "the likelihood is fixed per study (ELBOs under different likelihoods do "
                    "not compare): set it in the top-level `likelihood` block",
                )
        return data

    @model_validator(mode="before")
    @classmethod
    def _user_blocks(cls, data: Any) -> Any:
        """A key that is no field must name an architecture; its block is typed here."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for key in [k for k in data if k not in cls.model_fields]:
            try:
                resolve(key)
            except SpecError as err:
                knobs = ", ".join(n for n in cls.model_fields if n not in SHIPPED)
                raise located_error(
                    str(key), f"neither a knob ({knobs}) nor an architecture: {err.reason}"
                ) from None
            try:
                data[key] = _BLOCK.validate_python(data[key])
            except ValidationError as err:
                first = err.errors()[0]
                where = ".".join(str(p) for p in (key, *first["loc"]))
                raise located_error(where, first["msg"]) from None
        return data

    @model_validator(mode="after")
    def _domains(self) -> _SearchSpaceBase:
        for arch in self.architecture.values():
            check_architecture(arch)
        for name in MODEL_KNOBS:
            _check(name, getattr(self, name), ModelConfig, name)
        for name in TRAINING_KNOBS:
            _check(name, getattr(self, name), TrainingKnobs, name)
        problem = free_bits_conflict(max(self.free_bits.values()), max(self.objective_k.values()))
        if problem:
            raise located_error(
                "free_bits", f"{problem}; in a search space fix free_bits at 0 or objective_k at 1"
            )
        for arch, block in self.blocks().items():
            config = config_class(arch)
            known = sorted(set(config.model_fields) - set(MODEL_KNOBS))
            for knob, param in block.items():
                if knob not in known:
                    raise located_error(f"{arch}.{knob}", f"unknown {arch} knob; known: {known}")
                _check(f"{arch}.{knob}", param, config, knob)
        return self

    def blocks(self) -> dict[str, dict[str, Param]]:
        """Every architecture's block of searched knobs that the spec gives."""
        shipped = {name: getattr(self, name) for name in SHIPPED if getattr(self, name)}
        return {**shipped, **(self.model_extra or {})}

    def knobs(self, architecture: str) -> dict[str, Param]:
        """The searched knobs of one architecture, by their config names."""
        return self.blocks().get(architecture) or {}


def _search_space_fields() -> dict[str, Any]:
    """A Param per knob, defaulting to the config's own default (a fixed value), and a block
    per shipped architecture (a user's architecture's block is checked by `_user_blocks`)."""
    fields: dict[str, Any] = {"architecture": (Param, _param("mlp"))}
    for model, names in ((ModelConfig, MODEL_KNOBS), (TrainingKnobs, TRAINING_KNOBS)):
        for name in names:
            fields[name] = (Param, _param(model.model_fields[name].default))
    for arch in SHIPPED:
        fields[arch] = (dict[str, Param], Field(default_factory=dict))
    return fields


SearchSpace = create_model(
    "SearchSpace", __base__=_SearchSpaceBase, __module__=__name__, **_search_space_fields()
)


Objective = Literal["elbo", "rate_distortion"]
SINGLE_OBJECTIVE_SAMPLERS = ("cmaes",)


class TrainingSpec(RunSettings):
    """A study's run settings (shared with every trial's run config) and what a trial does
    beside training: judge collapse, draw pictures."""

    collapse: Literal["ignore", "prune"] = "ignore"
    pictures: bool = True


class _Named(Strict):
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _bare_name(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data


class SamplerSpec(_Named):
    name: Literal[SAMPLERS] = "tpe"  # type: ignore[valid-type]
    baseline: bool = Field(
        True,
        description="a new study's first trial is the knobs' defaults (the pytorch/examples "
        "VAE, beta = 1, Adam at 1e-3) moved into the search space: the number tuning has to "
        "beat, and a first point at beta = 1 for the sampler (not with grid: the grid is the "
        "design)",
    )
    cost_aware: bool | Literal["auto"] = Field(
        "auto",
        description="prefer predicted improvement per training second: each trial's "
        "architecture is picked among several of the sampler's draws by expected improvement "
        "over the measured seconds per epoch of that architecture (`CostAwareSampler`); auto = "
        "on where the architecture is searched (two or more choices) and the sampler is tpe, "
        "random, gp or cmaes",
    )


# pruners that compare trials only at exactly the same step (Optuna's median and percentile):
# with steps in seconds two trials almost never share one, so they would never prune
EXACT_STEP_PRUNERS = ("median", "percentile", "patient")


class PrunerSpec(_Named):
    name: Literal[PRUNERS] = "curve"  # type: ignore[valid-type]
    wrapped: PrunerSpec | None = None
    fidelity: Literal["epochs", "seconds"] = Field(
        "epochs",
        description="the step trials report and are compared at: epochs, or seconds (the "
        "trial's cumulative training seconds, rounded up, one more than the last report at "
        "least), so a slow architecture is judged against a fast one at equal compute; "
        "seconds works with curve (it interpolates the best curve), successive_halving and "
        "hyperband (their rungs are resource thresholds; min_resource is then seconds)",
    )

    @model_validator(mode="after")
    def _fidelity_fits(self) -> PrunerSpec:
        if self.fidelity == "seconds" and self.name in EXACT_STEP_PRUNERS:
            raise located_error(
                "fidelity",
                f"the {self.name} pruner compares trials at exactly the same step, which trials "
                "reporting seconds almost never share: use curve, successive_halving or "
                "hyperband with fidelity seconds",
            )
        return self


class BudgetSpec(Strict):
    n_trials: int | None = Field(None, ge=1)
    timeout: float | None = Field(
        None, gt=0, description="seconds; no trial starts after them (running ones finish)"
    )
    seconds: float | None = Field(
        None,
        gt=0,
        description="wall seconds of the run, on the database's clock and shared by every "
        "worker: no trial starts after them, and a running trial's training stops at them "
        "(it completes with its last validation ELBO; its IW-NLL and pictures follow)",
    )
    trial_seconds: float | None = Field(
        None,
        gt=0,
        description="training seconds per trial: a trial's training stops at them (mid-epoch: "
        "that epoch is validated and is its last) and it completes with that validation ELBO, "
        "never pruned for it",
    )


class StudySpec(UsesArchitectures):
    """A whole study: what to search, on which data, with which sampler, pruner and budget."""

    study_name: StudyName
    storage: str = DEFAULT_STORAGE
    artifact_dir: str | None = Field(None, description="default: beside the SQLite file")
    seed: int = 0
    dataset: DatasetSpec = Field(default_factory=DatasetSpec)
    likelihood: LikelihoodSpec = Field(default_factory=LikelihoodSpec)
    search_space: SearchSpace = Field(default_factory=SearchSpace)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    pruner: PrunerSpec = Field(default_factory=PrunerSpec)
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    objective: Objective = Field(
        "elbo",
        description="elbo: maximize the validation ELBO; rate_distortion: minimize rate (KL) "
        "and distortion (-E[log p(x|z)]) together, a Pareto front (no pruning)",
    )

    @property
    def cost_aware(self) -> bool:
        """Whether trials' architectures are picked by improvement per second (`sampler.cost_aware`
        resolved: auto = on for a searched architecture and a sampler that draws freely)."""
        if self.sampler.cost_aware != "auto":
            return bool(self.sampler.cost_aware) and self.objective == "elbo"
        return (
            self.objective == "elbo"
            and self.sampler.name in COST_AWARE_SAMPLERS
            and len(self.search_space.architecture.values()) > 1
        )

    @model_validator(mode="before")
    @classmethod
    def _no_pruner_by_default_for_two_objectives(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("objective") == "rate_distortion":
            data.setdefault("pruner", "none")
        return data

    @model_validator(mode="after")
    def _conditional_has_labels(self) -> StudySpec:
        if True in self.search_space.conditional.values() and not self.dataset.has_labels:
            raise located_error("search_space.conditional", self.dataset.why_no_labels())
        return self

    @model_validator(mode="after")
    def _data_fits(self) -> StudySpec:
        self.dataset = fit_data(self.dataset, self.likelihood)
        for arch in self.search_space.architecture.values():
            check_fits_vectors(arch, self.dataset, "search_space.architecture")
        return self

    @model_validator(mode="after")
    def _references(self) -> StudySpec:
        self.record_references(self.search_space.architecture.values())
        return self

    @model_validator(mode="after")
    def _two_objectives_fit(self) -> StudySpec:
        if self.objective == "rate_distortion":
            if self.pruner.name != "none":
                raise located_error(
                    "pruner.name",
                    "objective rate_distortion is a two-objective study, which Optuna cannot "
                    f"prune: use pruner none, not {self.pruner.name!r}",
                )
            if self.sampler.name in SINGLE_OBJECTIVE_SAMPLERS:
                raise located_error(
                    "sampler.name",
                    f"sampler {self.sampler.name!r} cannot optimize two objectives "
                    "(objective rate_distortion): use tpe, gp, random or qmc",
                )
        return self


def shipped_specs() -> dict[str, Path]:
    """Specs that ship with the package (the `studies/` folder), by name."""
    root = resources.files("vae_tune.studies")
    return {
        p.name.removesuffix(".yaml"): Path(str(p))
        for p in root.iterdir()
        if p.name.endswith(".yaml")
    }


def read_spec(path_or_name: str | Path) -> tuple[dict[str, Any], Path]:
    """Read a study spec file, or a shipped spec by its bare name (`quickstart`)."""
    specs = shipped_specs()
    if not Path(path_or_name).is_file() and str(path_or_name) in specs:
        path_or_name = specs[str(path_or_name)]
    known = ", ".join(sorted(specs))
    return read_yaml(path_or_name, f"shipped specs: {known}")


def load_spec(
    source: str | Path | Mapping[str, Any],
    overrides: Mapping[str, Any] | None = None,
    flags: Mapping[str, str] | None = None,
) -> StudySpec:
    """Read (a file, a shipped spec's name, or a mapping), override (dotted keys, None = leave
    alone) and validate a study spec; an error in an overridden field names the flag it came
    from (`flags`: dotted key -> flag)."""
    if isinstance(source, Mapping):
        data, where = copy.deepcopy(dict(source)), "study spec"
    else:
        data, path = read_spec(source)
        where = f"study spec {path}"
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    for dotted, value in given.items():
        set_path(data, dotted, value)
    try:
        return validate(StudySpec, data, where)
    except SpecError as err:
        lines = str(err).splitlines()
        for i, line in enumerate(lines):
            for dotted in given:
                if (flags or {}).get(dotted) and line.startswith(f"{dotted}"):
                    lines[i] = f"{line} (given by {flags[dotted]}, not the spec file)"
        raise SpecError("\n".join(lines)) from None
