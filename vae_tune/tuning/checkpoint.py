"""Per-epoch training checkpoints in the artifact store, so a retried trial resumes.

A worker that dies (kill -9, preemption, Ctrl-C) leaves its trial RUNNING; the heartbeat fails
it and Optuna queues a WAITING retry with the same parameters whose `retry_history` system attr
lists the trials it replaces. The retry then resumes from the latest checkpoint any of them
saved instead of starting over; `vae_tune.training.trainer` makes that resume bit-exact.

Each epoch's state is written under a new artifact id and the trial's `checkpoint` user attr
is pointed at it before the previous file is removed, so a crash at any moment leaves the attr
naming a complete file. Checkpoints are scratch: they are written with the store's own
`write` (not `upload_artifact`, whose dashboard entries could not be removed again) and deleted
when the trial finishes. The store must be shared by the workers (one machine: automatic; many
machines: a shared `artifact_dir`); a retry that cannot read the file starts afresh.
"""

from __future__ import annotations

import logging
import tempfile
import uuid
from typing import Any

import optuna
import torch
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial

from vae_tune.tuning import record
from vae_tune.tuning.record import read

_log = logging.getLogger("vae_tune")

# settings that may differ between the original and the retry without changing the maths
_MAY_DIFFER = ("device", "threads", "compile", "eval_batch_size", "epochs", "source")


def frozen(trial: optuna.Trial) -> FrozenTrial:
    """A running trial as the study stores it now (its system attrs, its reported values)."""
    return next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)


def retry_history(trial: optuna.Trial | FrozenTrial) -> list[int]:
    """Numbers of the trials this one retries, oldest first (empty: not a retry)."""
    stored = trial if isinstance(trial, FrozenTrial) else frozen(trial)
    return list(stored.system_attrs.get("retry_history", []))


def seed_number(trial: optuna.Trial) -> int:
    """The trial number that seeds a trial: the original's for a retry, so the retry trains (and
    `export-best` reproduces) exactly the run it resumes."""
    history = retry_history(trial)
    return history[0] if history else trial.number


def _comparable(config: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (config or {}).items() if k not in _MAY_DIFFER}


class TrialCheckpoints:
    """The `vae_tune.training.trainer.Checkpoints` of one trial, in an Optuna artifact store."""

    def __init__(self, trial: optuna.Trial, store: Any):
        self.trial = trial
        self.store = store
        self._previous: str | None = None

    def load(self) -> dict[str, Any] | None:
        """The newest checkpoint of the trials this one retries, or None (a fresh start)."""
        history = retry_history(self.trial)
        resumed = None
        if history:
            by_number = {t.number: t for t in self.trial.study.get_trials(deepcopy=False)}
            for number in reversed(history):
                ref = read(by_number[number]).checkpoint if number in by_number else None
                if not ref:
                    continue
                try:
                    with self.store.open_reader(ref.artifact_id) as f:
                        saved = torch.load(f, map_location="cpu", weights_only=True)
                except Exception as err:  # noqa: BLE001 - unreadable for any reason: start afresh
                    # e.g. another machine's local store, or a half-written file
                    self._skipped(number, ref.artifact_id, f"unreadable: {err!r}")
                    continue
                theirs, ours = _comparable(saved.get("config")), _comparable(self._config())
                if theirs != ours:  # the spec changed under the study: do not mix two runs
                    keys = theirs.keys() | ours.keys()
                    changed = sorted(k for k in keys if theirs.get(k) != ours.get(k))
                    self._skipped(number, ref.artifact_id, f"its config differs in {changed}")
                    continue
                resumed = saved["state"]
                record.write(
                    self.trial, resumed_from={"trial": number, "epoch": int(resumed["epoch"])}
                )
                self._restore_curve(resumed)
                break
        if resumed is not None or read(self.trial).resumed_from_epoch is not None:  # inherited
            record.write(self.trial, resumed_from_epoch=int(resumed["epoch"]) if resumed else 0)
        return resumed

    def _skipped(self, number: int, artifact_id: str, why: str) -> None:
        _log.warning(
            "trial %d: not resuming from trial %d's checkpoint %s (%s)",
            self.trial.number,
            number,
            artifact_id,
            why,
        )

    def _restore_curve(self, state: dict[str, Any]) -> None:
        """Report the checkpointed epochs the retry did not inherit (the worker may have died
        between saving an epoch and reporting it), so the learning curve has no hole."""
        have = frozen(self.trial).intermediate_values
        for h in state.get("history", []):
            try:
                epoch, value = int(h["epoch"]), float(h["val"]["elbo"])
            except (KeyError, TypeError, ValueError):
                return
            if epoch not in have:
                self.trial.report(value, epoch)

    def save(self, state: dict[str, Any]) -> None:
        artifact_id = f"checkpoint-{uuid.uuid4().hex}.pt"
        with tempfile.TemporaryFile() as f:
            torch.save({"config": self._config(), "trial": self.trial.number, "state": state}, f)
            f.seek(0)
            self.store.write(artifact_id, f)
        try:
            record.write(
                self.trial, checkpoint={"artifact_id": artifact_id, "epoch": int(state["epoch"])}
            )
        except Exception:  # e.g. the trial was failed meanwhile: leave no orphan file
            _remove(self.store, artifact_id)
            raise
        if self._previous is not None:
            _remove(self.store, self._previous)
        self._previous = artifact_id

    def _config(self) -> dict[str, Any] | None:
        return read(self.trial).config


def _remove(store: Any, artifact_id: str) -> None:
    try:
        store.remove(artifact_id)
    except (ArtifactNotFound, OSError):
        pass


def release(trial: optuna.Trial) -> str | None:
    """Before a trial is told finished: clear its `checkpoint` attribute (a finished trial
    must not name a file that `discard` is about to delete) and return the artifact id."""
    latest = read(trial).checkpoint
    if latest is None:
        return None
    record.write(trial, checkpoint=None)
    return latest.artifact_id


def discard(
    study: optuna.Study, trial: FrozenTrial, store: Any, released: str | None = None
) -> None:
    """Once a trial has finished for good (complete, pruned, or failed by an error rather
    than a crash), delete its checkpoint (`released` by `release`, or still named by its
    attribute) and those of the trials it retried."""
    if not trial.state.is_finished():
        return
    numbers = set(retry_history(trial))
    ids = []
    if numbers:
        for t in study.get_trials(deepcopy=False):
            held = read(t).checkpoint if t.number in numbers else None
            if held is not None:
                ids.append(held.artifact_id)
    latest = read(trial).checkpoint
    if latest is not None:
        ids.append(latest.artifact_id)
    if released:
        ids.append(released)
    for artifact_id in ids:
        _remove(store, artifact_id)
