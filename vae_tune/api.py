"""The Python API: `tune`, `train` and `load`, typed, for notebooks and scripts. The CLI is a
thin layer over these: each command parses its flags, calls one function here, prints.

    result = vae_tune.tune("quickstart", n_trials=10)          # a study, resumed if it exists
    print(result.best_value, result.best_params)
    model = vae_tune.train(result.best_config, output="runs/best")
    z_mean, z_logvar = model.encode(images)
    faces = model.sample(16)
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from optuna.trial import FrozenTrial

from vae_tune.data.download import cache_dir
from vae_tune.defaults import DEFAULT_SPEC
from vae_tune.errors import SpecError, UserError
from vae_tune.files import write_atomic
from vae_tune.models.base import VAE
from vae_tune.models.likelihoods import Likelihood
from vae_tune.reporting.progress import StageProgress, TrialProgress, epoch_line, summary_lines
from vae_tune.runner.launcher import (
    WORKER_ENV_FLAG,
    parse_devices,
    parse_workers,
    run_study,
    share_devices,
    submit_study,
)
from vae_tune.runs import evaluation, sampling
from vae_tune.runs.reproduce import reproduce
from vae_tune.runs.rundir import METRICS, open_run, read_metrics
from vae_tune.training.config import RunConfig, read_yaml, set_path, validate, write_config
from vae_tune.tuning.artifacts import artifact_dir
from vae_tune.tuning.export import best_config
from vae_tune.tuning.record import validation_elbo
from vae_tune.tuning.spec import StudySpec, load_spec
from vae_tune.tuning.storage import mask_url
from vae_tune.tuning.study import Prepared, best_trial
from vae_tune.tuning.warm_start import WarmStart

Echo = Callable[..., None]


def echo_stdout(line: str = "", err: bool = False) -> None:
    """The default `echo`: a line to stdout, or stderr with `err` (as typer.echo takes it)."""
    print(line, file=sys.stderr if err else sys.stdout, flush=True)


SpecLike = str | os.PathLike | Mapping[str, Any] | StudySpec
ConfigLike = str | os.PathLike | Mapping[str, Any] | RunConfig
ArrayLike = Any  # numpy array, torch tensor, or a torch Dataset of (x[, y])


@dataclass
class Result:
    """What `tune` leaves: the Optuna study (every trial, as Optuna stores it) and its best."""

    study: optuna.Study
    spec: StudySpec
    finished: int  # trials finished during this call
    seconds: float
    interrupted: bool = False
    ok: bool = True

    @property
    def best_trial(self) -> FrozenTrial:
        """The trial with the best validation ELBO (a two-objective study: of its front)."""
        try:
            return best_trial(self.study)
        except ValueError:
            raise UserError(
                f"study {self.study.study_name!r} has no complete trial yet", "study_name"
            ) from None

    @property
    def best_value(self) -> float:
        """The best trial's validation ELBO (beta = 1, nats per example; higher is better)."""
        return validation_elbo(self.best_trial)

    @property
    def best_params(self) -> dict[str, Any]:
        return dict(self.best_trial.params)

    @property
    def best_config(self) -> RunConfig:
        """The best trial's full run config: `vae_tune.train(result.best_config)` retrains it."""
        return validate(RunConfig, best_config(self.study), "the best trial's config")

    def export(self, path: str | os.PathLike, trial: int | None = None) -> Path:
        """Write the best (or `trial`'s) run config as YAML or JSON, for `vae-tune train`."""
        path = Path(path)
        write_config(best_config(self.study, trial), path)
        return path

    def report(self, path: str | os.PathLike = "report.html") -> Path:
        """Write the study's self-contained HTML report."""
        from vae_tune.reporting.report import write_report  # lazy: plotly, for reports only

        path = Path(path)
        write_report(self.spec.study_name, self.spec.storage, path, self.spec.artifact_dir)
        return path

    def summary(self) -> str:
        return "\n".join(summary_lines(self.study, self.seconds, self.finished)).strip()


def _spec_source(spec: SpecLike) -> str | Path | Mapping[str, Any]:
    if isinstance(spec, StudySpec):
        return spec.model_dump(mode="json")
    if isinstance(spec, Mapping | str):
        return spec
    if isinstance(spec, os.PathLike):
        return Path(spec)
    raise SpecError(f"a spec is a file, a shipped spec's name, a dict or a StudySpec, got {spec!r}")


def as_arrays(data: ArrayLike, labels: ArrayLike | None = None) -> tuple[np.ndarray, Any]:
    """numpy arrays of the examples (and labels) from an array, a tensor or a torch Dataset."""
    if isinstance(data, torch.utils.data.Dataset) and not isinstance(data, torch.Tensor):
        items = [data[i] for i in range(len(data))]  # type: ignore[arg-type]
        paired = all(isinstance(it, tuple | list) and len(it) == 2 for it in items)
        xs = [it[0] if paired else it for it in items]
        data = torch.stack([torch.as_tensor(x) for x in xs])
        if paired and labels is None:
            labels = torch.as_tensor([int(it[1]) for it in items])
    x = data.detach().cpu().numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
    y = None
    if labels is not None:
        y = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels)
    return x, y


def stage_data(data: ArrayLike, labels: ArrayLike | None, folder: Path) -> dict[str, Any]:
    """Write in-memory data where every worker reads it: an .npz named by its content, so a
    resumed study finds the same file. Returns the `dataset` block that names it."""
    x, y = as_arrays(data, labels)
    if x.ndim not in (2, 3):
        raise UserError(
            f"data: expected N examples x D features (a table) or N x H x W images, got shape "
            f"{x.shape}",
            "data",
        )
    buffer = io.BytesIO()
    np.savez(buffer, x=x, **({"y": y} if y is not None else {}))
    raw = buffer.getvalue()
    path = folder / "data" / f"{hashlib.sha256(raw).hexdigest()[:16]}.npz"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, raw, "data")
    if x.ndim == 2:  # rows of features: a table
        return {
            "name": "table",
            "path": str(path),
            "key": "x",
            **({"labels": "y"} if y is not None else {}),
        }
    labels_key = "y" if y is not None else None
    return {"name": "array", "path": str(path), "key": "x", "labels_key": labels_key}


def _study_spec(
    spec: SpecLike,
    data: ArrayLike | None,
    labels: ArrayLike | None,
    storage: str | None,
    study_name: str | None,
    n_trials: int | None,
    timeout: float | None,
    epochs: int | None,
    overrides: Mapping[str, Any] | None,
    flags: Mapping[str, str] | None,
) -> StudySpec:
    """The checked spec of `tune` and `submit`: the spec with the keyword overrides, and
    in-memory `data` staged as a file the workers read."""
    given = dict(overrides or {})
    given.update(
        {
            k: v
            for k, v in {
                "storage": storage,
                "study_name": study_name,
                "budget.n_trials": n_trials,
                "budget.timeout": timeout,
                "training.epochs": epochs,
            }.items()
            if v is not None
        }
    )
    source = _spec_source(spec)
    study_spec = load_spec(source, given, flags)
    if data is not None:
        folder = artifact_dir(study_spec.storage, study_spec.artifact_dir)
        block = stage_data(data, labels, folder)
        kept = study_spec.dataset.model_dump(exclude_defaults=True, exclude={"standardize"})
        given["dataset"] = {**kept, **block}
        study_spec = load_spec(source, given, flags)
    return study_spec


@dataclass(frozen=True)
class Submitted:
    """A study handed to a worker pool: its name, storage and budget."""

    study_name: str
    storage: str
    budget: dict[str, Any]


def submit(
    spec: SpecLike = DEFAULT_SPEC,
    *,
    data: ArrayLike | None = None,
    labels: ArrayLike | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    n_trials: int | None = None,
    timeout: float | None = None,
    epochs: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    warm_start: WarmStart | None = None,
    heartbeat: Mapping[str, int] | None = None,
    echo: Echo = echo_stdout,
    flags: Mapping[str, str] | None = None,
) -> Submitted:
    """Add a study to a worker pool and return at once: create it (or add `n_trials` to its
    budget), checking its data and models now; pool workers (`vae-tune worker --all`) run its
    trials. The arguments are `tune`'s."""
    study_spec = _study_spec(
        spec, data, labels, storage, study_name, n_trials, timeout, epochs, overrides, flags
    )
    study, budget = submit_study(
        study_spec,
        heartbeat=dict(heartbeat) if heartbeat else None,
        warm_start=warm_start,
        echo=echo,
    )
    return Submitted(study.study_name, study_spec.storage, budget)


def tune(
    spec: SpecLike = DEFAULT_SPEC,
    *,
    data: ArrayLike | None = None,
    labels: ArrayLike | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    n_trials: int | None = None,
    timeout: float | None = None,
    epochs: int | None = None,
    workers: int | str | None = None,
    devices: str | Sequence[str] | None = None,
    trials_per_device: int = 1,
    overrides: Mapping[str, Any] | None = None,
    warm_start: WarmStart | None = None,
    heartbeat: Mapping[str, int] | None = None,
    progress: bool = True,
    echo: Echo = echo_stdout,
    flags: Mapping[str, str] | None = None,
) -> Result:
    """Run a study: create it, or resume it if the storage has one of that name, add
    `n_trials` to its budget, and run trials until the budget is spent.

    `spec` is a YAML file, a shipped spec's name (`quickstart`, `mnist`), a dict or a
    `StudySpec`. `data` (with `labels`) replaces the spec's dataset by in-memory examples:
    a numpy array, a torch tensor or a torch Dataset. `overrides` sets dotted spec keys
    (`{"training.epochs": 3}`). `workers`: a number, or None/"auto" (one per core on a CPU);
    a class registered in this process must live in a file for workers > 1. `progress`
    prints a line per trial, a live status line (a terminal or a notebook) and a summary
    through `echo`; False prints nothing.
    """
    if os.environ.get(WORKER_ENV_FLAG):
        raise UserError(
            "vae_tune.tune() was called while a worker process imported your module: guard "
            'the call with `if __name__ == "__main__":`, as for multiprocessing'
        )
    say: Echo = echo if progress else (lambda *a, **k: None)
    study_spec = _study_spec(
        spec, data, labels, storage, study_name, n_trials, timeout, epochs, overrides, flags
    )
    device_names = list(devices) if isinstance(devices, list | tuple) else parse_devices(devices)
    device_list = share_devices(device_names, trials_per_device, study_spec.training.device)
    n_workers = parse_workers(str(workers)) if workers not in (None, "auto") else None

    def header(prepared: Prepared, n_workers: int) -> None:
        s, sp = prepared.splits, prepared.spec
        say(
            f"study {sp.study_name!r} in {mask_url(sp.storage)}\n"
            f"  data {sp.dataset.name}: {len(s.train)} train / {len(s.val)} validation "
            + (
                f"rows of {len(s.features)} features"
                if s.features
                else f"images of {s.image_shape[0]}x{s.image_shape[1]}"
            )
            + "; "
            f"sampler {sp.sampler.name}, pruner {sp.pruner.name}, "
            f"{sp.training.epochs} epochs max"
            + (f", grid of {len(prepared.grid)} points" if prepared.grid is not None else "")
        )

    started = time.perf_counter()
    beat = dict(heartbeat) if heartbeat else {}
    # progress=False draws nothing: not even the live status line of a terminal or notebook
    live = TrialProgress(study_spec.budget.n_trials, echo=say) if progress else None
    with live or contextlib.nullcontext():
        outcome = run_study(
            study_spec,
            workers=n_workers,
            devices=device_list,
            heartbeat=beat,
            warm_start=warm_start,
            on_prepared=header,
            on_trial=live.trial if live else None,
            on_epoch=live.epoch if live else None,
            echo=say,
        )
    result = Result(
        outcome.study,
        study_spec,
        outcome.finished,
        time.perf_counter() - started,
        outcome.interrupted,
        outcome.ok,
    )
    if outcome.interrupted:
        say(
            "\ninterrupted: the running trial is marked FAIL and queued to resume from its "
            "last checkpoint; run again to continue."
        )
    for line in summary_lines(result.study, result.seconds, result.finished):
        say(line)
    return result


def run_config(config: ConfigLike, **changes: Any) -> RunConfig:
    """A run config from a file, a dict or a RunConfig, with dotted `changes` applied."""
    if isinstance(config, RunConfig):
        data, label = config.model_dump(mode="json"), "run config"
    elif isinstance(config, Mapping):
        data, label = dict(config), "run config"
    else:
        data, path = read_yaml(config)
        label = f"run config {path}"
    for dotted, value in changes.items():
        if value is not None:
            set_path(data, dotted, value)
    return validate(RunConfig, data, label)


class TrainedModel:
    """A trained VAE and its run directory: encode, reconstruct, sample, interpolate, and
    evaluate on the test split. Inputs are tensors or numpy arrays shaped like the data's
    examples (images H x W, a table's rows of D features), in the data's own units; outputs
    are CPU tensors, the means of p(x|z) where data comes back, in the data's units too (a
    standardized table's transform is undone)."""

    def __init__(self, path: Path, device: str | None = None):
        self.path = Path(path)
        self._run = open_run(self.path, device)

    @property
    def config(self) -> RunConfig:
        return self._run.config

    @property
    def model(self) -> VAE:
        return self._run.saved.model

    @property
    def likelihood(self) -> Likelihood:
        return self._run.saved.likelihood

    @property
    def metrics(self) -> dict[str, Any]:
        """metrics.json of the run: the training history, test ELBO, any evaluation."""
        return read_metrics(self._run)

    def _x(self, x: Any) -> torch.Tensor:
        t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
        shape = self._run.saved.image_shape
        t = t.float().reshape(-1, *shape).to(self._run.saved.device)
        return self.likelihood.from_data(t)  # a standardized table's units

    def _y(self, y: Any) -> torch.Tensor | None:
        if y is None:
            return None
        return torch.as_tensor(y).long().reshape(-1).to(self._run.saved.device)

    @torch.no_grad()
    def encode(self, x: Any, y: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar) of q(z|x) (q(z|x, y) for a conditional model)."""
        mu, logvar = self.model.encode(self._x(x), self._y(y))
        return mu.float().cpu(), logvar.float().cpu()

    @torch.no_grad()
    def decode(self, z: Any, y: Any = None) -> torch.Tensor:
        """The mean of p(x|z) for latent codes z."""
        z = torch.as_tensor(z).float().to(self._run.saved.device)
        out = self.model.decode(z, self._y(y))
        values = self.likelihood.to_data(self.likelihood.mean(out)).float().cpu()
        return values.flatten(1) if self.config.dataset.vectors else values  # a table: N x D

    @torch.no_grad()
    def reconstruct(self, x: Any, y: Any = None) -> torch.Tensor:
        """The mean of p(x|z) at the posterior mean of each x (through a flow, if any)."""
        z = self.model.code(self._x(x), self._y(y))
        return self.decode(z, y)

    @torch.no_grad()
    def sample(
        self, n: int = 16, temperature: float = 1.0, seed: int = 0, label: int | None = None
    ) -> torch.Tensor:
        """n draws of the mean of p(x|z), z from the prior scaled by `temperature`."""
        generator = torch.Generator(device=self._run.saved.device).manual_seed(seed)
        z = self.model.sample_prior(n, generator) * temperature
        y = None if label is None else torch.full((n,), label)
        return self.decode(z, y)

    @torch.no_grad()
    def interpolate(self, a: Any, b: Any, steps: int = 8, spherical: bool = False) -> torch.Tensor:
        """Decoded points on the path between the codes of two examples a and b."""
        za, zb = (self.model.code(self._x(v), None)[0] for v in (a, b))
        t = torch.linspace(0, 1, steps, device=za.device)[:, None]
        path = sampling.slerp(za, zb, t) if spherical else sampling.lerp(za, zb, t)
        return self.decode(path)

    def evaluate(
        self,
        k: int = 1000,
        examples: int | None = None,
        gap_examples: int = 100,
        gap_steps: int = 300,
        seed: int = 0,
        progress: bool = False,
    ) -> dict[str, Any]:
        """Score the model on the test split (IW-NLL in nats per example, active units, mutual
        information, amortization gap, sample quality) and add it to metrics.json."""
        request = evaluation.Request(k, examples, gap_examples, gap_steps, seed)
        device = str(self._run.saved.device)
        if progress:
            with StageProgress() as stages:
                return evaluation.evaluate_run(self.path, request, stages, device)
        return evaluation.evaluate_run(self.path, request, None, device)

    def pictures(self, **request: Any) -> list[Path]:
        """Draw the PNG grids `vae-tune sample` draws (into RUN/pictures); keywords as
        `vae_tune.runs.sampling.Request` (reconstruct=True, interpolate=True, ...)."""
        return sampling.draw_pictures(self.path, sampling.Request(**request))

    def __repr__(self) -> str:
        arch = self.config.model["architecture"]
        return f"TrainedModel({str(self.path)!r}, architecture={arch!r})"


def train(
    config: ConfigLike,
    *,
    data: ArrayLike | None = None,
    labels: ArrayLike | None = None,
    output: str | os.PathLike | None = None,
    force: bool = False,
    save: str | os.PathLike | None = None,
    epochs: int | None = None,
    device: str | None = None,
    data_dir: str | None = None,
    progress: bool = True,
    echo: Echo = echo_stdout,
) -> TrainedModel:
    """Train one run config (a file, a dict, a RunConfig, or `result.best_config`) exactly
    as a trial trains it, score the test split, and keep the run in `output` (default: a new
    temporary folder). `data` (with `labels`) replaces the config's dataset by in-memory
    examples, as for `tune` (kept in the cache folder, `$VAE_TUNE_CACHE`, by content, so the
    run directory can find them later). Returns the trained model, loaded."""
    changes: dict[str, Any] = {"epochs": epochs, "device": device, "dataset.data_dir": data_dir}
    if data is not None:
        block = stage_data(data, labels, cache_dir())
        kept = run_config(config).dataset.model_dump(exclude_defaults=True, exclude={"standardize"})
        changes = {**changes, "dataset": {**kept, **block}}
    cfg = run_config(config, **changes)
    say: Echo = echo if progress else (lambda *a, **k: None)
    where = Path(output) if output is not None else Path(tempfile.mkdtemp(prefix="vae-tune-run-"))

    saved = Path(save) if save is not None else None
    done = reproduce(cfg, lambda run: say(epoch_line(run)), saved, where, force or output is None)
    test = done.test
    say(f"test ELBO {test.elbo:.3f} nats/example (recon {test.recon:.3f}, KL {test.kl:.3f})")
    return TrainedModel(where, device)


def load(run: str | os.PathLike, device: str | None = None) -> TrainedModel:
    """Load a run directory (`train(..., output=DIR)`, `vae-tune train --output DIR`)."""
    return TrainedModel(Path(run), device)


__all__ = [
    "METRICS",
    "Result",
    "TrainedModel",
    "load",
    "run_config",
    "train",
    "tune",
]
