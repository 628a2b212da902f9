"""Run configs: one training run, fully resolved, as typed objects.

A *run config* is what a trial trains and what `vae-tune train` reproduces: the training knobs
(`TrainingKnobs`), the run settings (`RunSettings`, shared with a study spec's `training`
block), the data, the likelihood and the model. Validation errors name the field path and
happen before anything is trained or written. The YAML helpers here read every spec and
config file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from vae_tune.data import dataset_names
from vae_tune.errors import SpecError, UserError
from vae_tune.files import write_atomic
from vae_tune.models import parse_config
from vae_tune.models.config import ModelConfig
from vae_tune.models.likelihoods import LIKELIHOODS
from vae_tune.models.registry import register_references, resolve


class Strict(BaseModel):
    """Unknown keys are errors, named by their path."""

    model_config = ConfigDict(extra="forbid")


def located_error(field: str, message: str) -> PydanticCustomError:
    """An error located at `field` below the validator's own location."""
    return PydanticCustomError("vae_tune", message, {"field": field})


_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def _check_device(device: str) -> str:
    if not _DEVICE.match(device):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    return device


Precision = Literal["auto", "fp32", "bf16"]


class TrainingKnobs(Strict):
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
            raise located_error("free_bits", problem)
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


class DatasetSpec(Strict):
    """Which data to model and how to split it (the split is fixed by the study seed): a named
    image dataset, `array` (your images), or `table` (your rows of features)."""

    name: str = "digits"
    data_dir: str | None = None
    path: str | None = Field(None, description="array, table: the file")
    key: str | None = Field(None, description="array, table: which array of a .npz")
    labels_key: str | None = Field(None, description="array: .npz key of integer class labels")
    columns: list[str] | None = Field(
        None, description="table: the feature columns of a .csv, .parquet or .h5ad (default all)"
    )
    labels: str | None = Field(
        None,
        description="table: the class labels: a column (csv, parquet), an array of the .npz, an "
        "obs column (h5ad), or a file of their own (.npy, .csv, .txt)",
    )
    standardize: bool | None = Field(
        None,
        description="table: standardize each feature by the training split's mean and standard "
        "deviation (kept with the model; values come back in the data's units); default: true "
        "under the gaussian likelihood, false otherwise",
    )
    val_fraction: float = Field(0.15, gt=0, lt=1)
    test_fraction: float = Field(0.15, gt=0, lt=1)
    subset: int | None = Field(None, ge=10, description="use at most this many training images")
    download: bool = Field(True, description="fetch missing files into the cache")

    @property
    def has_labels(self) -> bool:
        """Whether the images come with class labels: every named dataset does; an array
        when `labels_key` names them."""
        if self.name == "table":
            return self.labels is not None
        return self.name != "array" or self.labels_key is not None

    @property
    def vectors(self) -> bool:
        """Whether the examples are rows of features (a table) rather than images."""
        return self.name == "table"

    def why_no_labels(self) -> str:
        return (
            f"dataset {self.name!r} has no class labels to condition on (for an array dataset "
            "give dataset.labels_key, for a table dataset.labels)"
        )

    @model_validator(mode="after")
    def _needs_path(self) -> DatasetSpec:
        if self.name in ("array", "table") and not self.path:
            kind = ".npy or .npz" if self.name == "array" else ".npy, .npz, .csv, .parquet or .h5ad"
            raise located_error("path", f"the {self.name} dataset needs `path` to a {kind} file")
        if self.labels_key is not None and self.name != "array":
            raise located_error("labels_key", f"applies to the array dataset only, not {self.name}")
        for name in ("columns", "labels", "standardize"):
            if getattr(self, name) is not None and self.name != "table":
                raise located_error(name, f"applies to the table dataset only, not {self.name}")
        return self

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in dataset_names():
            raise ValueError(f"unknown dataset {name!r}; known: {', '.join(dataset_names())}")
        return name


class LikelihoodSpec(Strict):
    """p(x|z), fixed per study. `binarize` applies to `bernoulli` only: `dynamic` resamples
    binary training images every epoch; validation/test use one fixed binarization per seed."""

    name: Literal[LIKELIHOODS] = Field(  # type: ignore[valid-type]
        "bernoulli",
        description="images: bernoulli, continuous_bernoulli, gaussian; tables: gaussian (real "
        "features), poisson, negative_binomial, zinb (counts), bernoulli (binary features)",
    )
    binarize: Literal["none", "static", "dynamic"] = "none"
    scale: float | Literal["learned"] = Field("learned", description="gaussian only")

    @model_validator(mode="after")
    def _consistent(self) -> LikelihoodSpec:
        if self.binarize != "none" and self.name != "bernoulli":
            raise located_error(
                "binarize", f"binarization applies to bernoulli only, not {self.name}"
            )
        if isinstance(self.scale, float) and self.scale <= 0:
            raise located_error("scale", "must be > 0 or 'learned'")
        return self


def fit_data(dataset: DatasetSpec, likelihood: LikelihoodSpec, where: str = "") -> DatasetSpec:
    """The dataset with its `standardize` default resolved for `likelihood`; raises a located
    error where the two do not go together (paths start with `where`)."""
    if not dataset.vectors:
        return dataset
    if likelihood.binarize != "none":
        raise located_error(
            f"{where}likelihood.binarize", "binarization is for images, not a table's features"
        )
    if dataset.standardize and likelihood.name != "gaussian":
        raise located_error(
            f"{where}dataset.standardize",
            f"standardized features are real-valued: the {likelihood.name} likelihood models the "
            "raw values (set standardize: false, or use the gaussian likelihood)",
        )
    if dataset.standardize is None:
        return dataset.model_copy(update={"standardize": likelihood.name == "gaussian"})
    return dataset


def check_fits_vectors(architecture: str, dataset: DatasetSpec, field: str) -> None:
    """Refuse an architecture made for images (convolutions, rows as a sequence) on a table."""
    if dataset.vectors and getattr(resolve(architecture).model, "images_only", False):
        raise located_error(
            field,
            f"{architecture} is an architecture for images (H x W); a table's rows are vectors "
            "of features: use mlp, hierarchical or your own",
        )


class RunSettings(Strict):
    """How a run trains and scores, beside what it searches: one model that a study spec's
    `training` block and a run config both use, so a new setting is one field here."""

    epochs: int = Field(10, ge=1)
    device: str = "auto"
    precision: Precision = Field(
        "auto",
        description="training-step arithmetic; auto = bf16 where the hardware is fast "
        "(evaluation is always fp32)",
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
    iw_examples: int = Field(1000, ge=1, description="validation examples the IW-NLL scores")

    _device = field_validator("device")(_check_device)


class UsesArchitectures(Strict):
    """A spec or run config that may name the user's own architectures: `architectures` maps
    a name to the reference every process imports it from (`mypkg.vae:MyVAE`,
    `/abs/path/file.py:MyVAE`). It is filled in for the architectures registered with the
    decorator, so worker processes, `train` and `load` find them too."""

    architectures: dict[str, str] = Field(
        default_factory=dict,
        description="your own architectures by name: module:Class or path/to/file.py:Class",
    )

    @model_validator(mode="before")
    @classmethod
    def _import_references(cls, data: Any) -> Any:
        refs = data.get("architectures") if isinstance(data, dict) else None
        if isinstance(refs, dict) and all(isinstance(v, str) for v in refs.values()):
            try:
                register_references(refs)
            except SpecError as err:
                raise located_error(err.field or "architectures", err.reason) from None
        return data

    def record_references(self, names: Iterable[str]) -> None:
        """Add the reference of each named user architecture that has one (decorated ones)."""
        for name in names:
            arch = resolve(name)
            if arch.origin in ("decorator", "reference") and arch.reference:
                self.architectures.setdefault(name, arch.reference)


def check_architecture(name: Any, field: str = "architecture") -> None:
    """Raise a located error unless `name` resolves to an architecture."""
    try:
        resolve(name)
    except SpecError as err:
        raise located_error(field, err.reason) from None


class RunConfig(TrainingKnobs, RunSettings, UsesArchitectures):
    """One fully resolved training run: what a trial trains and what `vae-tune train` reruns."""

    dataset: DatasetSpec = Field(default_factory=DatasetSpec)
    likelihood: LikelihoodSpec = Field(default_factory=LikelihoodSpec)
    model: dict[str, Any] = Field(default_factory=lambda: {"architecture": "mlp"})
    seed: int = 0
    data_seed: int = 0
    source: dict[str, Any] | None = Field(None, description="study, trial and value it came from")

    @field_validator("model")
    @classmethod
    def _buildable(cls, model: dict[str, Any]) -> dict[str, Any]:
        check_architecture(model.get("architecture"))
        try:
            parse_config(model)
        except ValidationError as err:
            first = err.errors()[0]
            msg = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
            path = ".".join(str(p) for p in first["loc"])
            raise located_error(path, f"{msg}, got {first.get('input')!r}") from None
        return model

    @model_validator(mode="after")
    def _references(self) -> RunConfig:
        self.record_references([self.model["architecture"]])
        return self

    @model_validator(mode="before")
    @classmethod
    def _exported_before_averaging(cls, data: Any) -> Any:
        """A config export-best wrote (it has `source`) before `ema_decay` existed was trained
        and scored on its last weights: keep them, so it retrains to its value."""
        if isinstance(data, dict) and "source" in data and "ema_decay" not in data:
            return {**data, "ema_decay": 0.0}
        return data

    @model_validator(mode="after")
    def _data_fits(self) -> RunConfig:
        self.dataset = fit_data(self.dataset, self.likelihood)
        check_fits_vectors(self.model["architecture"], self.dataset, "model.architecture")
        return self

    @model_validator(mode="after")
    def _conditional_has_labels(self) -> RunConfig:
        if self.model.get("conditional") and not self.dataset.has_labels:
            raise located_error("model.conditional", self.dataset.why_no_labels())
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


def read_yaml(
    path: str | Path, missing: str = "write one with `vae-tune export-best`"
) -> tuple[dict[str, Any], Path]:
    """Read a spec or config file (YAML or JSON) as a mapping; `missing` is the hint when the
    file does not exist."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"no such file: {path} ({missing})")
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


def write_config(config: dict[str, Any], path: Path) -> None:
    """Write as YAML or JSON by suffix, whole or not at all."""
    if path.suffix in (".yaml", ".yml"):
        text = yaml.safe_dump(config, sort_keys=False)
    elif path.suffix == ".json":
        text = json.dumps(config, indent=2) + "\n"
    else:
        raise UserError(
            f"unsupported suffix {path.suffix!r}: use .yaml, .yml or .json", "output"
        )
    write_atomic(path, text)
