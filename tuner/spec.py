"""Study specs and run configs: YAML data validated into typed objects.

A *study spec* (studies/*.yaml) says what to search and how; a *run config* is one point of
that space, fully resolved: what a trial trains and what `vae-tune train` reproduces.
Validation errors name the field path (``search_space.beta.low``) and happen before anything
touches the database.
"""

from __future__ import annotations

import json
import math
import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from models import architectures, config_class, parse_config
from models.config import ModelConfig
from tuner.datasets import dataset_names
from tuner.defaults import DEFAULT_STORAGE
from tuner.errors import SpecError
from tuner.samplers import PRUNERS, SAMPLERS

Scalar = bool | int | float | str
# Optuna's RDB storage keeps study names in a VARCHAR(512); control characters (newlines) would
# break every table and shell line that shows the name
MAX_STUDY_NAME = 512
StudyName = Annotated[
    str, Field(min_length=1, max_length=MAX_STUDY_NAME, pattern=r"^[^\x00-\x1f\x7f]+$")
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _fail(field: str, message: str) -> PydanticCustomError:
    """An error located at `field` below the validator's own location."""
    return PydanticCustomError("vae_tune", message, {"field": field})


class Param(_Strict):
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
            raise _fail("", "give exactly one of: a fixed value, low/high, or choices")
        if ranged:
            if self.low is None or self.high is None:
                raise _fail(
                    "low" if self.low is None else "high", "a range needs both low and high"
                )
            if self.low > self.high:
                raise _fail("low", f"low ({self.low}) must be <= high ({self.high})")
            if self.log and self.low <= 0:
                raise _fail("low", f"log scale needs low > 0, got {self.low}")
            if self.log and self.step is not None:
                raise _fail("step", "step cannot be combined with log scale")
            for i, v in enumerate(self.grid or []):
                if isinstance(v, (bool, str)) or not self.low <= v <= self.high:
                    raise _fail(
                        f"grid.{i}", f"grid value {v!r} is outside [{self.low}, {self.high}]"
                    )
        elif self.choices is not None:
            if not self.choices:
                raise _fail("choices", "choices must not be empty")
            if self.grid is not None and any(v not in self.choices for v in self.grid):
                raise _fail("grid", "every grid value must be one of the choices")
        elif self.grid is not None:
            raise _fail("grid", "a fixed value has no grid")
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


class TrainingKnobs(_Strict):
    """Training hyperparameters a study can search. Each is one field here: its type, range
    and default; the search space, its checks and the run config all derive from them (a new
    knob is one field, plus the code that uses it)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    beta: float = Field(1.0, gt=0, description="weight of the KL term in the training loss")
    lr: float = Field(1e-3, gt=0, description="learning rate")
    batch_size: int = Field(64, ge=1)
    kl_schedule: Literal["none", "linear", "cyclical"] = Field(
        "linear",
        description="KL weight over training: none = beta throughout; linear = warm-up from 0 "
        "to beta over warmup_epochs (0: none); cyclical = Fu et al. 2019, kl_cycles x kl_ratio",
    )
    warmup_epochs: int = Field(0, ge=0, description="linear KL warm-up from 0 to beta")
    kl_cycles: int = Field(4, ge=1, description="cyclical: cycles M over the training run")
    kl_ratio: float = Field(
        0.5, gt=0, le=1, description="cyclical: fraction R of a cycle spent rising to beta"
    )
    free_bits: float = Field(0.0, ge=0, description="per-dimension KL floor in the loss, nats")
    objective_k: int = Field(
        1, ge=1, le=5000, description="importance samples of the training bound (1: the ELBO)"
    )
    weight_decay: float = Field(0.0, ge=0)
    optimizer: Literal["adam", "adamw"] = "adam"  # names of torch.optim classes, lower case
    lr_schedule: Literal["none", "cosine", "step", "iwae"] = "none"
    grad_clip: float = Field(0.0, ge=0, description="max gradient norm; 0 = no clipping")
    ema_decay: float = Field(
        0.999,
        ge=0,
        lt=1,
        description="the run evaluates and keeps the exponential moving average of its weights "
        "with this decay (warmed up as min(decay, (1 + t) / (10 + t)) after t steps); 0 = the "
        "last weights",
    )

    @model_validator(mode="after")
    def _bound_fits(self) -> TrainingKnobs:
        problem = free_bits_conflict(self.free_bits, self.objective_k)
        if problem:
            raise _fail("free_bits", problem)
        return self


def free_bits_conflict(free_bits: float, objective_k: int) -> str | None:
    """Why free bits and the importance-weighted bound do not combine (None: they do)."""
    if free_bits > 0 and objective_k > 1:
        return (
            f"free bits ({free_bits}) floor the single-sample ELBO's KL term, which the "
            f"importance-weighted bound (objective_k = {objective_k}) does not have: use one"
        )
    return None


TRAINING_KNOBS = tuple(TrainingKnobs.model_fields)
MODEL_KNOBS = tuple(ModelConfig.model_fields)  # every architecture has them (latent_dim, ...)


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
            raise _fail(f"{path}.{label}", problem)


class _SearchSpaceBase(_Strict):
    """What a trial samples: every training and shared model knob, `architecture`, then one
    block of knobs per architecture (only the sampled architecture's block is active)."""

    @model_validator(mode="before")
    @classmethod
    def _likelihood_is_not_searched(cls, data: Any) -> Any:
        for key in ("likelihood", "binarize"):
            if isinstance(data, dict) and key in data:
                raise _fail(
                    key,
                    "the likelihood is fixed per study (ELBOs under different likelihoods do "
                    "not compare): set it in the top-level `likelihood` block",
                )
        return data

    @model_validator(mode="after")
    def _domains(self) -> _SearchSpaceBase:
        for arch in self.architecture.values():
            if arch not in architectures():
                raise _fail(
                    "architecture", f"unknown architecture {arch!r}; known: {architectures()}"
                )
        for name in MODEL_KNOBS:
            _check(name, getattr(self, name), ModelConfig, name)
        for name in TRAINING_KNOBS:
            _check(name, getattr(self, name), TrainingKnobs, name)
        problem = free_bits_conflict(max(self.free_bits.values()), max(self.objective_k.values()))
        if problem:
            raise _fail(
                "free_bits", f"{problem}; in a search space fix free_bits at 0 or objective_k at 1"
            )
        for arch in architectures():
            config = config_class(arch)
            known = sorted(set(config.model_fields) - set(MODEL_KNOBS))
            for knob, param in self.knobs(arch).items():
                if knob not in known:
                    raise _fail(f"{arch}.{knob}", f"unknown {arch} knob; known: {known}")
                _check(f"{arch}.{knob}", param, config, knob)
        return self

    def knobs(self, architecture: str) -> dict[str, Param]:
        """The searched knobs of one architecture, by their config names."""
        return getattr(self, architecture, None) or {}


def _search_space_fields() -> dict[str, Any]:
    """A Param per knob, defaulting to the config's own default (a fixed value), and a block
    per registered architecture: models added to the registry are searchable as they are."""
    fields: dict[str, Any] = {"architecture": (Param, _param("mlp"))}
    for model, names in ((ModelConfig, MODEL_KNOBS), (TrainingKnobs, TRAINING_KNOBS)):
        for name in names:
            fields[name] = (Param, _param(model.model_fields[name].default))
    for arch in architectures():
        fields[arch] = (dict[str, Param], Field(default_factory=dict))
    return fields


SearchSpace = create_model(
    "SearchSpace", __base__=_SearchSpaceBase, __module__=__name__, **_search_space_fields()
)


class DatasetSpec(_Strict):
    """Which images to model and how to split them (the split is fixed by the study seed)."""

    name: str = "digits"
    data_dir: str | None = None
    path: str | None = None
    key: str | None = None
    labels_key: str | None = Field(None, description="array: .npz key of integer class labels")
    val_fraction: float = Field(0.15, gt=0, lt=1)
    test_fraction: float = Field(0.15, gt=0, lt=1)
    subset: int | None = Field(None, ge=10, description="use at most this many training images")
    download: bool = Field(True, description="fetch missing files into the cache")

    @property
    def has_labels(self) -> bool:
        """Whether the images come with class labels: every named dataset does; an array
        when `labels_key` names them."""
        return self.name != "array" or self.labels_key is not None

    def why_no_labels(self) -> str:
        return (
            f"dataset {self.name!r} has no class labels to condition on (for an array dataset "
            "give dataset.labels_key)"
        )

    @model_validator(mode="after")
    def _array_needs_path(self) -> DatasetSpec:
        if self.name == "array" and not self.path:
            raise _fail("path", "the array dataset needs `path` to a .npy or .npz file")
        if self.labels_key is not None and self.name != "array":
            raise _fail("labels_key", f"applies to the array dataset only, not {self.name}")
        return self

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in dataset_names():
            raise ValueError(f"unknown dataset {name!r}; known: {', '.join(dataset_names())}")
        return name


class LikelihoodSpec(_Strict):
    """p(x|z), fixed per study. `binarize` applies to `bernoulli` only: `dynamic` resamples
    binary training images every epoch; validation/test use one fixed binarization per seed."""

    name: Literal["bernoulli", "continuous_bernoulli", "gaussian"] = "bernoulli"
    binarize: Literal["none", "static", "dynamic"] = "none"
    scale: float | Literal["learned"] = Field("learned", description="gaussian only")

    @model_validator(mode="after")
    def _consistent(self) -> LikelihoodSpec:
        if self.binarize != "none" and self.name != "bernoulli":
            raise _fail("binarize", f"binarization applies to bernoulli only, not {self.name}")
        if isinstance(self.scale, float) and self.scale <= 0:
            raise _fail("scale", "must be > 0 or 'learned'")
        return self


_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def _check_device(device: str) -> str:
    if not _DEVICE.match(device):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    return device


Precision = Literal["auto", "fp32", "bf16"]
Objective = Literal["elbo", "rate_distortion"]
SINGLE_OBJECTIVE_SAMPLERS = ("cmaes",)


class TrainingSpec(_Strict):
    epochs: int = Field(10, ge=1)
    device: str = "auto"
    precision: Precision = Field(
        "auto", description="training-step arithmetic; auto = bf16 where the hardware is fast"
    )
    threads: int = Field(0, ge=0, description="torch threads; 0 = one per available core")
    compile: bool = Field(
        False,
        description="torch.compile the networks of the training step; it costs seconds of "
        "compilation per trial and pays only where steps are long (bench/throughput.py "
        "--compile measures it)",
    )
    eval_batch_size: int = Field(1024, ge=1)
    iw_samples: int = Field(100, ge=0, description="k of the validation IW-NLL; 0 = skip")
    iw_examples: int = Field(1000, ge=1, description="validation images the IW-NLL scores")
    collapse: Literal["ignore", "prune"] = "ignore"
    pictures: bool = True

    _device = field_validator("device")(_check_device)


class _Named(_Strict):
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


class PrunerSpec(_Named):
    name: Literal[PRUNERS] = "curve"  # type: ignore[valid-type]
    wrapped: PrunerSpec | None = None


class BudgetSpec(_Strict):
    n_trials: int | None = Field(None, ge=1)
    timeout: float | None = Field(None, gt=0, description="seconds")


class StudySpec(_Strict):
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

    @model_validator(mode="before")
    @classmethod
    def _no_pruner_by_default_for_two_objectives(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("objective") == "rate_distortion":
            data.setdefault("pruner", "none")
        return data

    @model_validator(mode="after")
    def _conditional_has_labels(self) -> StudySpec:
        if True in self.search_space.conditional.values() and not self.dataset.has_labels:
            raise _fail("search_space.conditional", self.dataset.why_no_labels())
        return self

    @model_validator(mode="after")
    def _two_objectives_fit(self) -> StudySpec:
        if self.objective == "rate_distortion":
            if self.pruner.name != "none":
                raise _fail(
                    "pruner.name",
                    "objective rate_distortion is a two-objective study, which Optuna cannot "
                    f"prune: use pruner none, not {self.pruner.name!r}",
                )
            if self.sampler.name in SINGLE_OBJECTIVE_SAMPLERS:
                raise _fail(
                    "sampler.name",
                    f"sampler {self.sampler.name!r} cannot optimize two objectives "
                    "(objective rate_distortion): use tpe, gp, random or qmc",
                )
        return self


class RunConfig(TrainingKnobs):
    """One fully resolved training run: what a trial trains and what `vae-tune train` reruns."""

    dataset: DatasetSpec = Field(default_factory=DatasetSpec)
    likelihood: LikelihoodSpec = Field(default_factory=LikelihoodSpec)
    model: dict[str, Any] = Field(default_factory=lambda: {"architecture": "mlp"})
    iw_samples: int = Field(100, ge=0)
    iw_examples: int = Field(1000, ge=1)
    epochs: int = Field(10, ge=1)
    seed: int = 0
    data_seed: int = 0
    device: str = "auto"
    precision: Precision = "auto"  # the training step only: evaluation is always fp32
    threads: int = Field(0, ge=0)
    compile: bool = False  # torch.compile the networks (the same maths, another speed)
    eval_batch_size: int = Field(1024, ge=1)
    source: dict[str, Any] | None = Field(None, description="study, trial and value it came from")

    _device = field_validator("device")(_check_device)

    @field_validator("model")
    @classmethod
    def _buildable(cls, model: dict[str, Any]) -> dict[str, Any]:
        arch = model.get("architecture")
        if arch not in architectures():
            raise _fail("architecture", f"must be one of {architectures()}, got {arch!r}")
        try:
            parse_config(model)
        except ValidationError as err:
            first = err.errors()[0]
            msg = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
            path = ".".join(str(p) for p in first["loc"])
            raise _fail(path, f"{msg}, got {first.get('input')!r}") from None
        return model

    @model_validator(mode="before")
    @classmethod
    def _exported_before_averaging(cls, data: Any) -> Any:
        """A config export-best wrote (it has `source`) before `ema_decay` existed was trained
        and scored on its last weights: keep them, so it retrains to its value."""
        if isinstance(data, dict) and "source" in data and "ema_decay" not in data:
            return {**data, "ema_decay": 0.0}
        return data

    @model_validator(mode="after")
    def _conditional_has_labels(self) -> RunConfig:
        if self.model.get("conditional") and not self.dataset.has_labels:
            raise _fail("model.conditional", self.dataset.why_no_labels())
        return self


def format_errors(err: ValidationError) -> str:
    """One line per problem, each starting with the dotted field path."""
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        extra = (e.get("ctx") or {}).get("field")
        if extra:
            loc.append(extra)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{'.'.join(loc) or '<top>'}: {msg}")
    return "\n".join(lines)


def validate(model: type[BaseModel], data: Any, source: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise SpecError(f"invalid {source}:\n{format_errors(err)}") from None
    except RecursionError:
        raise SpecError(f"invalid {source}: nested too deeply") from None


class _Loader(yaml.SafeLoader):
    """YAML with YAML 1.2's floats: `1e-4` is a number, not the string PyYAML's 1.1 rules make
    of it (they want `1.0e-4`), so numbers read the same in every field."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def shipped_specs() -> dict[str, Path]:
    """Specs that ship with the package (the `studies/` folder), by name."""
    root = resources.files("studies")
    return {
        p.name.removesuffix(".yaml"): Path(str(p))
        for p in root.iterdir()
        if p.name.endswith(".yaml")
    }


def read_yaml(path_or_name: str | Path, shipped: bool = True) -> tuple[dict[str, Any], Path]:
    """Read a spec or config file; with `shipped`, a bare name such as `quickstart` finds a
    shipped spec (run configs are never shipped: `train` passes False)."""
    path = Path(path_or_name)
    if not path.exists():
        specs = shipped_specs() if shipped else {}
        if str(path_or_name) in specs:
            path = specs[str(path_or_name)]
        elif shipped:
            known = ", ".join(sorted(specs))
            raise SpecError(f"no such file: {path_or_name} (shipped specs: {known})")
        else:
            raise SpecError(f"no such file: {path_or_name} (write one with `vae-tune export-best`)")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(f"{path}: cannot read: {err}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.load(text, Loader=_Loader)
    except (yaml.YAMLError, ValueError) as err:
        raise SpecError(f"{path}: not valid YAML/JSON: {err}") from None
    except RecursionError:
        raise SpecError(f"{path}: nested too deeply to be a spec or config") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping at the top level")
    return data, path


def set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c` in nested dicts, creating levels as needed (for CLI overrides)."""
    *parents, last = dotted.split(".")
    for key in parents:
        child = data.get(key)
        if not isinstance(child, dict):
            child = data[key] = {}
        data = child
    data[last] = value


def load_spec(
    path_or_name: str | Path,
    overrides: dict[str, Any] | None = None,
    flags: dict[str, str] | None = None,
) -> StudySpec:
    """Read, override (dotted keys, None = leave alone) and validate a study spec; an error in
    an overridden field names the flag it came from (`flags`: dotted key -> flag)."""
    data, path = read_yaml(path_or_name)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    for dotted, value in given.items():
        set_path(data, dotted, value)
    try:
        return validate(StudySpec, data, f"study spec {path}")
    except SpecError as err:
        lines = str(err).splitlines()
        for i, line in enumerate(lines):
            for dotted in given:
                if (flags or {}).get(dotted) and line.startswith(f"{dotted}"):
                    lines[i] = f"{line} (given by {flags[dotted]}, not the spec file)"
        raise SpecError("\n".join(lines)) from None
