"""One worker pool for every study: `vae-tune worker --all`.

A pool worker serves every open vae-tune study in its storage, in turn: after running a trial
of one study it looks at the next study first, so two studies with budget left get trials
alternately (round robin), whatever their trial costs. A study joins the pool when it is
submitted (`vae-tune submit SPEC`, or `run`); the worker reads the spec stored on it, loads its
data once, and keeps that seat while it runs. Each claim is made under the study's lock against
its stored budget, exactly as a single-study worker does (`vae_tune.runner.worker`), and all
seats share one storage, so a pool worker holds at most 2 database connections too.

Without `serve`, the worker exits once no study has a trial left to start or running; with
`serve`, it waits for new studies (a team's long-running pool). Ctrl-C or SIGTERM fail the
running trial and queue it to resume, as for any worker.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence

import optuna

from vae_tune.runner.budget import BUDGET_ATTR, DONE, START, Tally, decide
from vae_tune.runner.interrupts import Interrupts
from vae_tune.runner.worker import RAN, Callback, Echo, Worker, join_study
from vae_tune.tuning.locks import StudyLock
from vae_tune.tuning.objective import Progress
from vae_tune.tuning.storage import Heartbeat, open_storage
from vae_tune.tuning.study import MARKER_ATTR, SPEC_ATTR

SERVE_POLL_S = 5.0  # how often an idle serving pool looks for new studies
TABLES_LOCK = "vae-tune: creating the tables"  # a lock name no study can clash with
_log = logging.getLogger("vae_tune")


def open_study_names(storage: optuna.storages.BaseStorage) -> list[str]:
    """The vae-tune studies a pool can serve (a stored spec and budget), oldest first."""
    return [
        s.study_name
        for s in storage.get_all_studies()
        if {MARKER_ATTR, SPEC_ATTR, BUDGET_ATTR} <= s.user_attrs.keys()
    ]


OPEN, RUNNING, FINISHED = "open", "running", "finished"


def study_status(study: optuna.Study) -> str:
    """running (trials running now), open (its budget allows more) or finished."""
    tally = Tally.of(study.get_trials(deepcopy=False))
    if tally.running:
        return RUNNING
    budget = study.user_attrs.get(BUDGET_ATTR) or {}
    return OPEN if budget and decide(budget, tally, time.time) == START else FINISHED


class Pool:
    """A worker's seats at every study of one storage (see the module)."""

    def __init__(
        self,
        storage_url: str,
        interrupts: Interrupts,
        *,
        device: str | None = None,
        threads: int | None = None,
        artifact_dir: str | None = None,
        progress: Progress | None = None,
    ):
        self.url = storage_url
        self.interrupts = interrupts
        self.joining = {"device": device, "threads": threads, "artifact_dir": artifact_dir}
        self.progress = progress
        with StudyLock(storage_url, TABLES_LOCK):  # pool workers started together on a new
            self.storage = open_storage(storage_url, Heartbeat())  # database create it once
        self.seats: dict[str, Worker] = {}
        self.broken: set[str] = set()  # studies this worker cannot serve (told once)
        self.next_turn = 0

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for seat in self.seats.values():
            seat.close()
        self.seats.clear()
        self.storage.close()

    def _seat(self, name: str, echo: Echo) -> Worker | None:
        if name not in self.seats:
            try:
                prepared, beat = join_study(name, self.url, storage=self.storage, **self.joining)
                self.seats[name] = Worker(
                    prepared,
                    beat,
                    self.interrupts,
                    self.progress,
                    storage=self.storage,
                )
            except Exception as err:  # noqa: BLE001 - one bad study must not stop the pool
                self.broken.add(name)
                echo(f"study {name!r}: cannot serve it ({type(err).__name__}: {err})")
                _log.debug("joining %s failed", name, exc_info=True)
                return None
            echo(f"joined study {name!r}")
        return self.seats[name]

    def run(
        self,
        callbacks: Sequence[Callback] = (),
        echo: Echo | None = None,
        serve: bool = False,
    ) -> Counter[str]:
        """Run trials of every open study in turn; return how many ran here, per study."""
        echo = echo or (lambda _line: None)
        ran: Counter[str] = Counter()
        told_idle = False
        while True:
            names = [n for n in open_study_names(self.storage) if n not in self.broken]
            start = self.next_turn % len(names) if names else 0
            rotated = names[start:] + names[:start]
            busy = False  # some study still has a trial to start or running
            for name in rotated:
                seat = self._seat(name, echo)
                if seat is None:
                    continue
                step, _tally = seat.step(callbacks, lambda line, n=name: echo(f"{n}: {line}"))
                if step == RAN:
                    ran[name] += 1
                    self.next_turn = names.index(name) + 1
                    busy, told_idle = True, False
                    break
                busy = busy or step != DONE
            else:
                if not busy and not serve:
                    return ran
                if not busy and not told_idle:
                    echo("no study has a trial to start: waiting for new ones (--serve)")
                    told_idle = True
                poll = min((s.poll_s for s in self.seats.values()), default=SERVE_POLL_S)
                self.interrupts.sleep(poll if busy else SERVE_POLL_S)
