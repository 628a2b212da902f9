"""The `vae-tune` command line: run studies, inspect them, export and retrain the best config."""

from __future__ import annotations

import enum
import functools
import logging
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import optuna
import typer

from vae_tune.defaults import DEFAULT_SPEC, DEFAULT_STORAGE
from vae_tune.errors import ServiceError, UserError
from vae_tune.tuning.samplers import PRUNERS, SAMPLERS

app = typer.Typer(
    help="Tune variational autoencoders with Optuna: every trial trains a PyTorch VAE and is "
    "scored by its validation ELBO (beta = 1, nats per example; higher is better).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
F = TypeVar("F", bound=Callable[..., Any])


def _version(show: bool) -> None:
    if show:
        from vae_tune.version import __version__

        typer.echo(f"vae-tune {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Tune variational autoencoders with Optuna."""


StorageOpt = Annotated[
    str,
    typer.Option(
        "--storage",
        envvar="VAE_TUNE_STORAGE",
        help="Database URL (any SQLAlchemy URL Optuna takes), e.g. sqlite:///vae-tune.db or "
        "postgresql+psycopg://user:pass@host/db.",
    ),
]

DataDirOpt = Annotated[
    str | None,
    typer.Option(
        help="Folder holding the dataset's IDX files, if not where the run config says "
        "(overrides dataset.data_dir)."
    ),
]


HeartbeatIntervalOpt = Annotated[
    int | None,
    typer.Option(
        min=1, help="Seconds between a running trial's heartbeats (default 10, or the study's)."
    ),
]
HeartbeatGraceOpt = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Seconds without a heartbeat after which a trial's worker counts as dead: the "
        "trial is failed and retried from its checkpoint (default 30, or the study's).",
    ),
]
MaxRetryOpt = Annotated[
    int | None,
    typer.Option(min=0, help="Retries per trial whose worker died (default 3, or the study's)."),
]


# options `run` and `submit` share (one definition each)
SpecArg = Annotated[
    str, typer.Argument(help="Study spec: a YAML file, or the name of a shipped spec.")
]
StorageOverrideOpt = Annotated[
    str | None,
    typer.Option(envvar="VAE_TUNE_STORAGE", help="Database URL; overrides the spec's."),
]
StudyNameOpt = Annotated[str | None, typer.Option(help="Study name; overrides the spec's.")]
TimeoutOpt = Annotated[
    float | None, typer.Option(min=0.001, help="Stop starting trials after this many seconds.")
]
EpochsOpt = Annotated[int | None, typer.Option(help="Max epochs per trial.")]


def _user_errors(fn: F) -> F:
    """Bad input -> one message on stderr and exit code 2; a machine or service in the way
    (database unreachable or full, port in use, disk full) -> one line and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import sqlalchemy.exc

        from vae_tune.tuning.storage import db_reason

        try:
            return fn(*args, **kwargs)
        except UserError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None
        except (ServiceError, ConnectionError) as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(getattr(err, "exit_code", 1)) from None
        except sqlalchemy.exc.SQLAlchemyError as err:
            typer.echo(f"error: storage: {db_reason(err)}", err=True)
            raise typer.Exit(1) from None
        except OSError as err:
            where = f" ({err.filename})" if err.filename else ""
            typer.echo(f"error: {err.strerror or err}{where}", err=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)


@app.command()
@_user_errors
def run(
    spec: SpecArg = DEFAULT_SPEC,
    storage: StorageOverrideOpt = None,
    study_name: StudyNameOpt = None,
    n_trials: Annotated[
        int | None, typer.Option(min=1, help="Trials to run now (grid: default the rest).")
    ] = None,
    timeout: TimeoutOpt = None,
    sampler: Annotated[str | None, typer.Option(help=f"One of: {', '.join(SAMPLERS)}.")] = None,
    pruner: Annotated[str | None, typer.Option(help=f"One of: {', '.join(PRUNERS)}.")] = None,
    epochs: EpochsOpt = None,
    seed: Annotated[int | None, typer.Option(help="Study seed (data split, sampler).")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
    dataset: Annotated[
        str | None,
        typer.Option(help="Dataset name (digits, mnist, fashion-mnist, kmnist, array)."),
    ] = None,
    data_dir: Annotated[
        str | None,
        typer.Option(help="Folder holding the dataset's IDX files (no download)."),
    ] = None,
    workers: Annotated[
        str,
        typer.Option(
            envvar="VAE_TUNE_WORKERS",
            help="Worker processes on this machine sharing the study and its budget: a number, "
            "or auto (the default): on a CPU one single-threaded worker per core (at most 4 "
            "on SQLite), which runs more trials per hour than one worker using every core "
            "for small VAEs; with CUDA or --devices one per device. 1 runs trials in this "
            "process.",
        ),
    ] = "auto",
    devices: Annotated[
        str | None,
        typer.Option(help="Comma-separated devices, one worker each, e.g. cuda:0,cuda:1."),
    ] = None,
    trials_per_device: Annotated[
        int,
        typer.Option(
            min=1,
            help="Trials at once on each CUDA device (--devices, or the spec's device): one "
            "small VAE leaves most of a GPU idle. 2 with --devices cuda:0,cuda:1 runs 4 "
            "workers.",
        ),
    ] = 1,
    artifact_dir: Annotated[
        str | None,
        typer.Option(
            help="Artifact folder (checkpoints, pictures), shared by the workers; overrides the "
            "spec's (default: beside the SQLite file, or $VAE_TUNE_ARTIFACTS).",
        ),
    ] = None,
    enqueue: Annotated[
        list[Path] | None,
        typer.Option(
            help="Run config (e.g. from export-best) to try first; repeat for several. A "
            "config outside this spec's search space is skipped with the reason.",
        ),
    ] = None,
    warm_start: Annotated[
        str | None,
        typer.Option(
            metavar="STUDY[:TOP_K]",
            help="Try the TOP_K (default 1) best trials of another vae-tune study first.",
        ),
    ] = None,
    warm_start_storage: Annotated[
        str | None,
        typer.Option(help="Storage of the --warm-start study (default: this study's)."),
    ] = None,
    heartbeat_interval: HeartbeatIntervalOpt = None,
    heartbeat_grace: HeartbeatGraceOpt = None,
    max_retry: MaxRetryOpt = None,
) -> None:
    """Start a study, or resume it if one of that name exists in the storage.

    With no SPEC, runs the shipped `quickstart` spec on the embedded `digits` data into
    sqlite:///vae-tune.db. Each trial trains a VAE, reports the validation ELBO every epoch
    and may be pruned; one line is printed per finished trial, then a summary.
    """
    from vae_tune import api
    from vae_tune.tuning.storage import Heartbeat
    from vae_tune.tuning.warm_start import WarmStart

    _quiet_optuna()
    overrides = {
        "storage": storage,
        "study_name": study_name,
        "budget.n_trials": n_trials,
        "budget.timeout": timeout,
        "sampler": sampler,
        "pruner": pruner,
        "training.epochs": epochs,
        "seed": seed,
        "training.device": device,
        "dataset.name": dataset,
        "dataset.data_dir": data_dir,
        "artifact_dir": artifact_dir,
    }
    flags = {dotted: "--" + dotted.rsplit(".", 1)[-1].replace("_", "-") for dotted in overrides}
    flags.update({"budget.n_trials": "--n-trials", "training.device": "--device"})
    result = api.tune(
        spec,
        overrides=overrides,
        flags=flags,
        workers=workers,
        devices=devices,
        trials_per_device=trials_per_device,
        warm_start=WarmStart(tuple(enqueue or ()), warm_start, warm_start_storage),
        heartbeat=Heartbeat.overrides(heartbeat_interval, heartbeat_grace, max_retry),
        echo=typer.echo,
    )
    if result.interrupted:
        raise typer.Exit(130)
    if not result.ok:
        raise typer.Exit(1)


@app.command()
@_user_errors
def worker(
    study_name: Annotated[
        str | None, typer.Option(envvar="VAE_TUNE_STUDY_NAME", help="Study to join.")
    ] = None,
    storage: StorageOpt = DEFAULT_STORAGE,
    all_studies: Annotated[
        bool,
        typer.Option(
            "--all",
            help="Serve every open study in the storage in turn (a worker pool) instead of one.",
        ),
    ] = False,
    serve: Annotated[
        bool,
        typer.Option(
            help="With --all: when no study has trials left, wait for new ones "
            "(`vae-tune submit`) instead of exiting."
        ),
    ] = False,
    spec: Annotated[
        str | None,
        typer.Option(
            envvar="VAE_TUNE_SPEC",
            help="If the study does not exist yet, create it from this spec (a file or a "
            "shipped spec name) with the spec's budget; otherwise ignored.",
        ),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="auto, cpu, cuda or cuda:N; overrides the study's.")
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            min=0,
            envvar="VAE_TUNE_THREADS",
            help="Torch threads (0: one per core); overrides the study's.",
        ),
    ] = None,
    artifact_dir: Annotated[
        str | None,
        typer.Option(
            envvar="VAE_TUNE_ARTIFACTS",
            help="Artifact folder (checkpoints, pictures), shared by the workers; overrides "
            "the study's spec.",
        ),
    ] = None,
    heartbeat_interval: HeartbeatIntervalOpt = None,
    heartbeat_grace: HeartbeatGraceOpt = None,
    max_retry: MaxRetryOpt = None,
) -> None:
    """Join a study and run its trials until the study-wide budget is spent; with --all, serve
    every open study of the storage (a worker pool fed by `vae-tune submit`).

    Reads the spec stored on the study, so no local spec file is needed; start as many
    workers as you like, on any machine that reaches the storage. A worker whose budget is
    spent waits for running trials, taking over those whose worker dies. Ctrl-C or SIGTERM
    mark the running trial FAIL, queue it to resume, and exit 130 (SIGTERM: 143). A database
    that stays down longer than VAE_TUNE_DB_OUTAGE_S seconds (default 600) stops the worker
    with exit code 75; start it again to resume.
    """
    from vae_tune.reporting.progress import TrialProgress
    from vae_tune.runner.interrupts import Interrupts
    from vae_tune.runner.pool import Pool
    from vae_tune.runner.worker import Worker, join_study, worker_name
    from vae_tune.tuning.storage import Heartbeat, mask_url

    if all_studies == (study_name is not None):
        raise UserError("give --study-name to join one study, or --all for every one", "worker")
    if serve and not all_studies:
        raise UserError("--serve goes with --all", "serve")
    if all_studies and spec is not None:
        raise UserError("--spec creates one study: use `vae-tune submit SPEC` for a pool", "spec")
    _quiet_optuna()
    beat = Heartbeat.overrides(heartbeat_interval, heartbeat_grace, max_retry)
    me = worker_name()

    def note(line: str) -> None:
        typer.echo(f"worker {me}: {line}")

    with Interrupts() as interrupts:  # from the start: a signal while joining stops cleanly
        if all_studies:
            typer.echo(f"worker {me} serves every open study in {mask_url(storage)}")
            try:
                with (
                    TrialProgress(None, f"worker {me}:", echo=typer.echo) as progress,
                    Pool(
                        storage,
                        interrupts,
                        device=device,
                        threads=threads,
                        artifact_dir=artifact_dir,
                        progress=progress.epoch,
                    ) as pool,
                ):
                    ran = pool.run([progress.trial], note, serve=serve)
            except KeyboardInterrupt:
                note("interrupted: the running trial is marked FAIL and queued to resume")
                raise typer.Exit(interrupts.exit_code) from None
            done = ", ".join(f"{n} {k}" for n, k in sorted(ran.items())) or "none"
            note(f"{sum(ran.values())} trial(s) run ({done}); no study has trials left")
            return
        prepared, heartbeat = join_study(
            study_name,
            storage,
            spec_file=spec,
            device=device,
            threads=threads,
            artifact_dir=artifact_dir,
            heartbeat=beat,
        )
        training = prepared.spec.training
        typer.echo(
            f"worker {me} joined study {study_name!r} in {mask_url(storage)}: device "
            f"{training.device}, {training.threads or 'all'} torch thread(s)"
        )
        try:
            with (
                TrialProgress(None, f"worker {me}:", echo=typer.echo) as progress,
                Worker(prepared, heartbeat, interrupts, progress.epoch) as seat,
            ):
                ran = seat.run([progress.trial], note)
        except KeyboardInterrupt:
            note("interrupted: the running trial is marked FAIL and queued to resume")
            raise typer.Exit(interrupts.exit_code) from None
    note(f"{ran} trial(s) run; the study's budget is spent")


@app.command()
@_user_errors
def submit(
    spec: SpecArg = DEFAULT_SPEC,
    storage: StorageOverrideOpt = None,
    study_name: StudyNameOpt = None,
    n_trials: Annotated[
        int | None, typer.Option(min=1, help="Trials to add to the study's budget.")
    ] = None,
    timeout: TimeoutOpt = None,
    epochs: EpochsOpt = None,
    heartbeat_interval: HeartbeatIntervalOpt = None,
    heartbeat_grace: HeartbeatGraceOpt = None,
    max_retry: MaxRetryOpt = None,
) -> None:
    """Add a study to a worker pool and return at once: `vae-tune worker --all` runs it.

    Creates the study (or adds --n-trials to its budget), after checking its data and models;
    nothing trains here. `vae-tune studies` shows it as open until its budget is spent.
    """
    from vae_tune import api
    from vae_tune.tuning.storage import Heartbeat, mask_url

    _quiet_optuna()
    overrides = {
        "storage": storage,
        "study_name": study_name,
        "budget.n_trials": n_trials,
        "budget.timeout": timeout,
        "training.epochs": epochs,
    }
    flags = {
        "storage": "--storage",
        "study_name": "--study-name",
        "budget.n_trials": "--n-trials",
        "budget.timeout": "--timeout",
        "training.epochs": "--epochs",
    }
    done = api.submit(
        spec,
        overrides={k: v for k, v in overrides.items() if v is not None},
        flags=flags,
        heartbeat=Heartbeat.overrides(heartbeat_interval, heartbeat_grace, max_retry),
        echo=typer.echo,
    )
    budget = done.budget
    size = f"{budget['target']} trial(s) in all" if budget["target"] is not None else "no count"
    until = " before its deadline" if budget["deadline"] else ""
    typer.echo(
        f"submitted study {done.study_name!r} to {mask_url(done.storage)}: {size}{until}; "
        f"pool workers run it (vae-tune worker --all --storage ...)"
    )


@app.command("storage-proxy")
@_user_errors
def storage_proxy(
    storage: StorageOpt = DEFAULT_STORAGE,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 13000,
) -> None:
    """Serve a database to many workers through Optuna's gRPC storage proxy.

    Workers then use --storage grpc://HOST:PORT and hold no database connection: the proxy
    keeps a small pool for all of them and checks each trial they claim against its study's
    budget, so budgets stay exact. Needs grpcio: pip install 'vae-tune[grpc]'.
    """
    from vae_tune.runner.proxy import serve_proxy
    from vae_tune.tuning.storage import GRPC, JOURNAL, require_grpc, storage_kind

    if storage_kind(storage) in (GRPC, JOURNAL):
        raise UserError("the proxy serves a database URL (PostgreSQL, MySQL, SQLite)", "storage")
    require_grpc("the storage proxy")
    _check_port_free(host, port)
    logging.basicConfig(format="%(message)s")
    serve_proxy(storage, host, port)


@app.command()
@_user_errors
def studies(
    storage: StorageOpt = DEFAULT_STORAGE,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the rows as JSON (for scripts).")
    ] = False,
) -> None:
    """List the studies in a storage: open (budget left), running or finished; trials by
    state, best validation ELBO, its architecture."""
    import json

    from rich.console import Console
    from rich.table import Table

    from vae_tune.runner.pool import study_status
    from vae_tune.tuning.storage import mask_url
    from vae_tune.tuning.study import study_rows

    rows = study_rows(storage, study_status)
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo(f"no studies in {mask_url(storage)}")
        return
    table = Table(title=f"studies in {mask_url(storage)}", title_justify="left")
    for name, justify in (
        ("study", "left"),
        ("status", "left"),
        ("complete", "right"),
        ("pruned", "right"),
        ("failed", "right"),
        ("running", "right"),
        ("best ELBO", "right"),
        ("best arch", "left"),
        ("started", "left"),
    ):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for r in rows:
        t = r["trials"]
        best = f"{r['best_value']:.3f}" if r["best_value"] is not None else "-"
        name = _printable(r["study"]) + ("" if r["vae_tune"] else " (not vae-tune)")
        if r["pareto_front"] is not None:
            name += f" (rate-distortion front of {len(r['pareto_front'])})"
        table.add_row(
            name,
            r["status"] or "-",
            str(t["complete"]),
            str(t["pruned"]),
            str(t["fail"]),
            str(t["running"]),
            best,
            r["best_architecture"] or "-",
            (r["started"] or "-").replace("T", " "),
        )
    Console(width=max(120, Console().width), soft_wrap=False).print(table)


def _printable(name: str) -> str:
    """A name as one safe line: control characters (newlines) shown escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in name)


def _existing_study(study_name: str, storage: str) -> optuna.Study:
    """Load a vae-tune study that must exist; a missing or foreign one is a user error."""
    from vae_tune.tuning.study import load_vae_study

    return load_vae_study(study_name, storage)


@app.command("export-best")
@_user_errors
def export_best(
    study_name: Annotated[str, typer.Option(help="Study to read.")],
    output: Annotated[
        Path | None, typer.Option(help="File to write: .yaml, .yml or .json.")
    ] = None,
    storage: StorageOpt = DEFAULT_STORAGE,
    json_out: Annotated[
        bool,
        typer.Option("--json", help="Print the config as JSON on stdout (for scripts)."),
    ] = False,
    trial: Annotated[
        int | None, typer.Option(min=0, help="Export this trial instead of the best.")
    ] = None,
    max_rate: Annotated[
        float | None,
        typer.Option(
            min=0,
            help="Export the trial with the least distortion whose rate (validation KL) is at "
            "most this many nats: a point on a rate-distortion front.",
        ),
    ] = None,
) -> None:
    """Write a trial's full training config; `vae-tune train FILE` reproduces it.

    By default the trial with the best validation ELBO (in a rate_distortion study: the point
    of the Pareto front with the best ELBO); --trial or --max-rate choose another.
    """
    import json

    from vae_tune.files import check_writable
    from vae_tune.training.config import write_config
    from vae_tune.tuning.export import best_config

    if output is None and not json_out:
        raise UserError("give --output FILE, or --json to print the config", "output")
    if trial is not None and max_rate is not None:
        raise UserError("give --trial or --max-rate, not both", "trial")
    if output is not None:
        check_writable(output)
    study = _existing_study(study_name, storage)
    config = best_config(study, trial, max_rate)
    if output is not None:
        write_config(config, output)
    src = config["source"]
    if json_out:
        typer.echo(json.dumps(config, indent=2))
    else:
        rd = f", rate {src['rate']:.3f}, distortion {src['distortion']:.3f}" if src["rate"] else ""
        typer.echo(f"wrote {output}: trial {src['trial']}, validation ELBO {src['value']:.3f}{rd}")


@app.command()
@_user_errors
def train(
    config: Annotated[
        Path, typer.Argument(help="Run config (.yaml/.json), e.g. from export-best.")
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            help="Keep the model as a run directory: config.yaml, model.pt, metrics.json and "
            "pictures, for `vae-tune sample` and `vae-tune evaluate`. Missing parent folders are "
            "made; the folder appears whole or not at all.",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option(help="Replace an --output folder that is not empty.")
    ] = False,
    save: Annotated[
        Path | None,
        typer.Option(
            help="Write only the model file (model.pt format) here; prefer --output, which "
            "keeps the metrics and pictures beside it.",
        ),
    ] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Override the epochs.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Train one config, printing validation ELBO per epoch and the test ELBO at the end.

    Runs the same code as a tuning trial, so an exported best config reproduces its value.
    The outputs are checked before training starts: an --output folder that is not empty
    needs --force.
    """
    from vae_tune.api import run_config
    from vae_tune.reporting.progress import epoch_line
    from vae_tune.runs.reproduce import reproduce

    cfg = run_config(config, epochs=epochs, device=device, **{"dataset.data_dir": data_dir})
    done = reproduce(cfg, lambda run: typer.echo(epoch_line(run)), save, output, force)
    test = done.test
    typer.echo(f"test ELBO {test.elbo:.3f} nats/example (recon {test.recon:.3f}, KL {test.kl:.3f})")
    if save is not None:
        typer.echo(f"saved the model to {save}")
    if output is not None:
        typer.echo(f"wrote {output}/: {', '.join(done.written)}")
        run_dir = shlex.quote(str(output))
        typer.echo(
            f"Next: vae-tune sample {run_dir} --reconstruct --interpolate --traverse; "
            f"vae-tune evaluate {run_dir}"
        )


class Around(str, enum.Enum):
    image = "image"
    zero = "zero"


RunArg = Annotated[
    Path,
    typer.Argument(help="Run directory written by `vae-tune train CONFIG --output RUN`."),
]
RunDeviceOpt = Annotated[
    str | None,
    typer.Option(help="auto, cpu, cuda or cuda:N (default: the run config's; auto picks CUDA)."),
]


@app.command()
@_user_errors
def sample(
    run: RunArg,
    n: Annotated[int, typer.Option(min=1, max=1024, help="Prior samples to draw.")] = 64,
    temperature: Annotated[
        float, typer.Option(min=0.0, help="Scale of the prior noise: z ~ N(0, T^2 I).")
    ] = 1.0,
    reconstruct: Annotated[
        bool, typer.Option(help="Also draw 16 test images beside their reconstructions.")
    ] = False,
    interpolate: Annotated[
        bool,
        typer.Option(
            help="Also draw paths in latent space between pairs of test images, linear and "
            "spherical."
        ),
    ] = False,
    traverse: Annotated[
        bool,
        typer.Option(
            help="Also draw one row per latent dimension (highest KL first) from -3 to +3 "
            "prior standard deviations; collapsed dimensions are marked inactive."
        ),
    ] = False,
    traverse_around: Annotated[
        Around,
        typer.Option(help="Traverse around the posterior mean of a test image, or around zero."),
    ] = Around.image,
    seed: Annotated[
        int,
        typer.Option(
            help="Seed of the noise and of the test images shown (same seed, same files)."
        ),
    ] = 0,
    out: Annotated[
        Path | None, typer.Option(help="Folder for the pictures (default: RUN/pictures).")
    ] = None,
    label: Annotated[
        int | None,
        typer.Option(
            help="A conditional model's class to draw the samples of (default: one row per "
            "class). Refused for an unconditional model."
        ),
    ] = None,
    device: RunDeviceOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Draw labelled PNG grids from a trained model: prior samples, and on request
    reconstructions, interpolations and latent traversals.

    Each picture carries a caption saying what it shows, which run and which seed. Works for
    every architecture and likelihood (the images shown are the means of p(x|z)).
    """
    from vae_tune.runs.sampling import Request, draw_pictures

    request = Request(
        n, temperature, reconstruct, interpolate, traverse, traverse_around.value, seed, label
    )
    for path in draw_pictures(run, request, out, device, data_dir):
        typer.echo(str(path))


def _evaluation_table(block: dict[str, Any], run: Path) -> Any:
    from rich.table import Table

    table = Table(title=f"evaluation of {run} (nats per test image)", title_justify="left")
    for name, justify in (("measure", "left"), ("value", "right"), ("notes", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    n, e, iw = block["examples"], block["test_elbo"], block["iw_nll"]
    table.add_row(
        "test ELBO", f"{e['elbo']:.3f}", f"recon {e['recon']:.3f}, KL {e['kl']:.3f}; {n} images"
    )
    cond = block.get("conditional")
    given = "-log p(x|y) (y: each image's label)" if cond else "-log p(x)"
    table.add_row(
        f"test IW-NLL, k = {iw['k']}",
        f"{iw['nll']:.3f} ± {iw['se']:.3f}",
        f"{given} bound (Burda et al. 2016); ± standard error over the images",
    )
    if cond:
        marginal = cond["iw_nll_marginal"]
        table.add_row(
            "test IW-NLL of p(x)",
            f"{marginal['nll']:.3f} ± {marginal['se']:.3f}",
            f"y summed out over {cond['classes']} classes, k = {marginal['k_per_class']} per "
            "class: compares with an unconditional model's IW-NLL",
        )
    kls = sorted(block["kl_per_dim"], reverse=True)
    table.add_row(
        "active units",
        f"{block['active_units']} of {block['latent_dim']}",
        "KL per dimension: "
        + ", ".join(f"{v:.2f}" for v in kls[:12])
        + (", ..." if len(kls) > 12 else ""),
    )
    mi = block["mutual_information"]
    table.add_row(
        "mutual information I(x; z)",
        f"{mi['mi']:.3f}",
        f"of at most log {mi['examples']} = {mi['bound']:.2f}; KL(q(z)||p(z)) "
        f"{mi['marginal_kl']:.3f} (Hoffman & Johnson 2016)",
    )
    gap = block["amortization_gap"]
    if "skipped" in gap:
        table.add_row("amortization gap", "-", f"skipped: {gap['skipped']}")
    else:
        table.add_row(
            "amortization gap",
            f"{gap['gap']:.3f} ± {gap['gap_se']:.3f}",
            f"ELBO {gap['encoder_elbo']:.3f} (encoder) -> {gap['optimized_elbo']:.3f} "
            f"(q optimized per image, {gap['steps']} Adam steps), {gap['examples']} images",
        )
    fcd = block["frechet_classifier_distance"]
    if "skipped" in fcd:
        table.add_row("Fréchet classifier distance", "-", f"skipped: {fcd['skipped']}")
    else:
        table.add_row(
            "Fréchet classifier distance",
            f"{fcd['distance']:.3f}",
            f"{fcd['examples']} samples vs test images; real floor (train vs test) "
            f"{fcd['floor']:.3f}; classifier test accuracy {fcd['accuracy']:.1%}",
        )
        if "label_accuracy" in fcd:
            table.add_row(
                "label accuracy of samples",
                f"{fcd['label_accuracy']:.1%}",
                "samples drawn for class y that the classifier calls y",
            )
    return table


@app.command()
@_user_errors
def evaluate(
    run: RunArg,
    k: Annotated[
        int,
        typer.Option(
            min=1,
            max=5000,
            help="Importance samples per test image for the IW-NLL (Burda et al. use 5000).",
        ),
    ] = 1000,
    examples: Annotated[
        int | None, typer.Option(min=1, help="Score only the first N test images (default all).")
    ] = None,
    gap_examples: Annotated[
        int,
        typer.Option(min=0, help="Test images the amortization gap optimizes q for (0: skip)."),
    ] = 100,
    gap_steps: Annotated[
        int, typer.Option(min=1, help="Adam steps of the per-image q optimization.")
    ] = 300,
    seed: Annotated[int, typer.Option(help="Seed of every random draw of the evaluation.")] = 0,
    device: RunDeviceOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Score a trained model on the test split and add an `evaluation` block to RUN/metrics.json.

    Reports the importance-weighted NLL (with its standard error), active units, KL per
    dimension and the mutual information I(x; z) (collapse shows as ~0), the amortization gap
    of the encoder, and sample quality as a Fréchet distance in the features of a small
    classifier trained (once, then cached) on the dataset's labels, beside the distance
    between real train and test images as its floor.
    """
    from rich.console import Console

    from vae_tune.reporting.progress import StageProgress
    from vae_tune.runs.evaluation import Request, evaluate_run
    from vae_tune.runs.rundir import METRICS

    request = Request(k, examples, gap_examples, gap_steps, seed)
    with StageProgress(echo=typer.echo) as progress:
        block = evaluate_run(run, request, progress, device, data_dir)
    Console(width=max(110, Console().width), soft_wrap=False).print(_evaluation_table(block, run))
    typer.echo(f"added the evaluation to {run / METRICS} ({block['seconds']:.0f} s)")


def _check_port_free(host: str, port: int) -> None:
    """Fail with one line before starting the server if the port is taken."""
    import socket

    try:
        with socket.create_server((host, port)):
            pass
    except OSError as err:
        raise ServiceError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None


@app.command()
@_user_errors
def dashboard(
    storage: StorageOpt = DEFAULT_STORAGE,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8080,
    artifact_dir: Annotated[
        str | None,
        typer.Option(
            envvar="VAE_TUNE_ARTIFACTS",
            help="Artifact folder (trial pictures); default: beside the SQLite file.",
        ),
    ] = None,
    refresh_s: Annotated[
        float,
        typer.Option(
            "--refresh", min=1.0, help="Seconds between updates of the VAE notes and figures."
        ),
    ] = 10.0,
) -> None:
    """Open optuna-dashboard on the same storage and artifact store (Ctrl-C to stop).

    Each trial's page shows its reconstruction and prior-sample pictures and a note of its VAE
    diagnostics; each study's page the rate-distortion and collapse figures. The dashboard
    writes the notes and figures itself (workers do not), and keeps them current while it runs.
    """
    from vae_tune.reporting.dashboard_views import serve_dashboard
    from vae_tune.tuning.artifacts import open_artifact_store
    from vae_tune.tuning.storage import mask_url

    store = open_artifact_store(storage, artifact_dir, create=False)
    _check_port_free(host, port)
    typer.echo(f"writing the VAE notes and figures of {mask_url(storage)}'s studies")
    serve_dashboard(
        storage,
        host,
        port,
        store,
        refresh_s,
        on_ready=lambda: typer.echo(
            f"optuna-dashboard for {mask_url(storage)} at http://{host}:{port}/"
        ),
    )


@app.command()
@_user_errors
def report(
    study_name: Annotated[str, typer.Option(help="Study to draw.")],
    output: Annotated[Path, typer.Option(help="HTML file to write.")] = Path("report.html"),
    storage: StorageOpt = DEFAULT_STORAGE,
    artifact_dir: Annotated[
        str | None,
        typer.Option(
            envvar="VAE_TUNE_ARTIFACTS",
            help="Artifact folder (trial pictures); default: beside the SQLite file.",
        ),
    ] = None,
) -> None:
    """Write one self-contained HTML page about a study (works offline).

    The rate-distortion plane, collapse (active units against latent size), outcomes and their
    reasons, learning curves, Optuna's history, importances, parallel coordinates and slices,
    and the best trial's pictures.
    """
    from vae_tune.reporting.report import write_report

    names = write_report(study_name, storage, output, artifact_dir)
    typer.echo(f"wrote {output}: {', '.join(names)}")


def main() -> None:  # pragma: no cover - `python -m vae_tune`, and the workers
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
