"""What a long call shows while it runs and when it ends, for the CLI and the Python API alike:
a line per finished trial, a live status line, a study summary, progress by stages.

A live line (rich) is drawn where it can be: a terminal or a Jupyter notebook. Elsewhere (CI,
`docker logs`, a file) a plain line per finished trial and at most one epoch line every
PROGRESS_EVERY_S seconds.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console

from vae_tune.tuning.record import collapse_count, read, validation_elbo
from vae_tune.tuning.study import baseline_summary, best_trial, counts, time_summary

Echo = Callable[..., None]
PROGRESS_EVERY_S = 5.0  # without a live display: at most one epoch line per this many seconds


def _live() -> Console | None:
    """A console that can redraw a line in place (a terminal or a notebook), else None."""
    console = Console()
    return console if console.is_terminal or console.is_jupyter else None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_params(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={_fmt(v)}" for k, v in params.items())


def trial_line(trial: FrozenTrial) -> str:
    """One finished trial: state, validation ELBO, seconds, KL, active units, parameters."""
    if trial.state == TrialState.COMPLETE:
        value = f"{validation_elbo(trial):9.3f}"
    elif trial.intermediate_values:
        value = f"{trial.intermediate_values[max(trial.intermediate_values)]:9.3f}"
    else:
        value = f"{'-':>9}"
    secs = trial.duration.total_seconds() if trial.duration else 0.0
    r = read(trial)
    note = r.stop_reason or r.fail_reason or ""
    note = f"  [{note.splitlines()[0]}]" if note else ""
    posterior = ""
    if r.val_kl is not None:
        collapsed = " COLLAPSED" if r.posterior_collapse else ""
        posterior = f"KL {r.val_kl:6.2f}  {r.active_units:>3} active{collapsed}  "
    return (
        f"trial {trial.number:>4}  {trial.state.name:<8} {value}  {secs:6.1f}s  {posterior}"
        f"{format_params(trial.params)}{note}"
    )


def epoch_line(run: Any) -> str:
    """One finished epoch of `train`: loss, validation ELBO and its terms, speed."""
    r = run.final
    return (
        f"epoch {r.epoch:>3}  train loss {r.train_loss:9.3f}  validation ELBO "
        f"{r.val.elbo:9.3f} (recon {r.val.recon:.3f}, KL {r.val.kl:.3f}, "
        f"{r.val.active_units} active units)  {r.examples_per_s:,.0f} ex/s"
    )


class TrialProgress:
    """Live progress of a study: on a terminal or in a notebook one status line updated in
    place (trials done / budget, best so far, ETA, and the current trial's epoch, validation
    ELBO and examples/s); otherwise a plain line per finished trial and at most one epoch
    line every PROGRESS_EVERY_S seconds."""

    def __init__(self, budget: int | None, prefix: str = "", echo: Echo = print):
        self.budget, self.prefix, self.echo = budget, prefix, echo
        self.done, self.best = 0, None
        self.started = self.last_line = time.monotonic()
        console = _live()
        self.status: Any = console.status("starting") if console is not None else None

    def __enter__(self) -> TrialProgress:
        if self.status is not None:
            self.status.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.status is not None:
            self.status.stop()

    def trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.done += 1
        elbo = validation_elbo(trial) if trial.state == TrialState.COMPLETE else None
        if elbo is not None and (self.best is None or elbo > self.best):
            self.best = elbo
        self.echo(trial_line(trial))

    def epoch(self, number: int, r: Any, epochs: int) -> None:
        text = (
            f"trial {number:>4}  epoch {r.epoch}/{epochs}  validation ELBO {r.val.elbo:9.3f}  "
            f"{r.examples_per_s:,.0f} ex/s"
        )
        now = time.monotonic()
        if self.status is not None:
            self.status.update(f"{self._study_line(now)}  |  {text}")
        elif now - self.last_line >= PROGRESS_EVERY_S:
            self.last_line = now
            self.echo(f"{self.prefix}  {text}")

    def _study_line(self, now: float) -> str:
        line = f"{self.done}" + (f"/{self.budget}" if self.budget else "") + " trials"
        if self.best is not None:
            line += f", best {self.best:.3f}"
        if self.budget and self.done:
            eta = (now - self.started) / self.done * max(0, self.budget - self.done)
            line += f", ETA {eta:.0f} s"
        return line


def summary_lines(study: optuna.Study, seconds: float, ran: int) -> list[str]:
    """The end of a run: counts by state, the best trial, what tuning gained over the
    baseline, where the time went, collapse warnings, and the command to export the best."""
    c = counts(study)
    lines = [
        f"\n{ran} trial(s) in {seconds:.1f}s. Study {study.study_name!r}: "
        f"{c['COMPLETE']} complete, {c['PRUNED']} pruned, {c['FAIL']} failed, "
        f"{c['RUNNING']} running, {c['WAITING']} waiting."
    ]
    try:
        best = best_trial(study)
    except ValueError:
        return [*lines, "No complete trial yet."]
    name = shlex.quote(study.study_name)
    if len(study.directions) > 1:
        front = sorted(study.best_trials, key=lambda t: t.values[0])
        lines.append(f"Pareto front (rate, distortion in nats/example): {len(front)} trials")
        for t in front:
            beta = (read(t).config or {}).get("beta", float("nan"))
            lines.append(
                f"  trial {t.number:>4}  rate {t.values[0]:8.3f}  distortion {t.values[1]:9.3f}"
                f"  beta {beta:.3g}"
            )
        lines.append(
            f"Pick one: vae-tune export-best --study-name {name} --trial N --output point.yaml "
            "(or --max-rate R)"
        )
    iw = read(best)
    nll = (
        f"; IW-NLL {iw.val_iw_nll:.3f} (k = {iw.iw_samples}, {iw.iw_examples} validation examples)"
        if iw.val_iw_nll is not None
        else ""
    )
    lines.append(
        f"Best: trial {best.number}, validation ELBO {validation_elbo(best):.3f} nats/example"
        + nll
    )
    lines.append(f"  {format_params(best.params)}")
    lines += [s for s in (baseline_summary(study), time_summary(study)) if s is not None]
    collapsed, judged = collapse_count(study.get_trials(deepcopy=False))
    if read(best).posterior_collapse:
        lines.append(
            "Warning: the best trial's posterior collapsed (no latent unit carries information: "
            "its decoder ignores z). Try a smaller beta, KL warm-up or free bits."
        )
    elif judged and collapsed * 2 > judged:
        lines.append(
            f"Warning: {collapsed} of {judged} trials collapsed (no active units; completed "
            "trials and those stopped for collapse)."
        )
    lines.append(f"Export it: vae-tune export-best --study-name {name} --output best.yaml")
    return lines


class StageProgress:
    """Progress of a long call by stages: with a live display a rich progress bar per stage,
    otherwise one plain line when a stage starts and ends, and at most one between every
    PROGRESS_EVERY_S seconds."""

    def __init__(self, echo: Echo = print) -> None:
        self.echo = echo
        self.tasks: dict[str, Any] = {}
        self.last_line = time.monotonic()
        self.bar: Any = None
        if _live() is not None:
            from rich.progress import Progress  # only where it draws

            self.bar = Progress()

    def __enter__(self) -> StageProgress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.bar is not None:
            if stage not in self.tasks:
                self.tasks[stage] = self.bar.add_task(stage, total=total)
            self.bar.update(self.tasks[stage], completed=done)
            return
        now = time.monotonic()
        if done in (0, total) or now - self.last_line >= PROGRESS_EVERY_S:
            self.last_line = now
            state = "done" if done == total else f"{done}/{total}" if done else "started"
            self.echo(f"{stage}: {state}")
