"""The VAE views `vae-tune dashboard` adds to optuna-dashboard: a Markdown note on each
finished trial (`vae_tune.reporting.notes`) and, on each study, the rate–distortion and
collapse figures beside Optuna's charts.

The dashboard process writes them, not the workers: a worker imports neither plotly nor
optuna-dashboard (1–2 s and a few hundred MB each), and nobody sees these views without a
dashboard. `serve_dashboard` writes every study's views before it serves its first page and
refreshes them every `refresh_s` seconds while it runs. Both go through optuna-dashboard's
public `save_note` and `save_plotly_graph_object`, so any optuna-dashboard on the storage
shows what the last `vae-tune dashboard` wrote.

Those two write a note or a figure as several study attributes, one after another, so a page
read between them would get half a figure (JSON that does not parse). In `serve_dashboard`
the web server's reads of study attributes wait while the refresher writes a view.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import optuna
from optuna.trial import TrialState

from vae_tune.reporting.figures import collapse_figure, rate_distortion_figure
from vae_tune.reporting.notes import note_markdown
from vae_tune.tuning.faults import RetryingStorage
from vae_tune.tuning.locks import StudyLock
from vae_tune.tuning.record import read
from vae_tune.tuning.storage import open_storage

FIGURES = {"rate-distortion": rate_distortion_figure, "collapse": collapse_figure}
NOTED_ATTR = "vae_tune:noted"  # the trial numbers whose note is written (a study system attr)
OUTCOMES = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned"}
REFRESH_S = 10.0

_log = logging.getLogger("vae_tune")


class DashboardViews:
    """Writes the notes and figures of every study of one storage, each only once it changed:
    a note per newly finished trial, the figures when a study's finished trials changed."""

    def __init__(self, storage: RetryingStorage, writing: threading.RLock | None = None):
        self.storage = storage
        self.writing = writing or threading.RLock()  # held while a view is half-written
        self._drawn: dict[str, int] = {}  # study name -> finished trials its figures show
        self._warned = False

    def refresh_or_warn(self) -> None:
        """`refresh`, best effort: a storage the dashboard may only read, or a study being
        deleted, leaves the views as they are (a warning the first time), never the page down."""
        try:
            self.refresh()
        except Exception:  # noqa: BLE001
            level = logging.DEBUG if self._warned else logging.WARNING
            _log.log(level, "could not update the VAE notes and figures", exc_info=True)
            self._warned = True

    def refresh(self) -> int:
        """Bring every study's views up to date; the number of notes written."""
        written = 0
        for summary in self.storage.get_all_studies():
            # RandomSampler: the trial handles below must not touch the study's own sampler
            study = optuna.load_study(
                study_name=summary.study_name,
                storage=self.storage,
                sampler=optuna.samplers.RandomSampler(),
            )
            with StudyLock(self.storage, study.study_name):  # one writer per study at a time
                written += self._refresh(study)
        return written

    def _refresh(self, study: optuna.Study) -> int:
        from optuna_dashboard import save_note, save_plotly_graph_object  # a 1-2 s import

        trials = study.get_trials(deepcopy=False)
        finished = [t for t in trials if t.state in OUTCOMES]
        study_id = self.storage.get_study_id_from_name(study.study_name)
        noted = set(self.storage.get_study_system_attrs(study_id).get(NOTED_ATTR, ()))
        fresh = [t for t in finished if t.number not in noted]
        if fresh:
            for trial in fresh:
                trial_id = self.storage.get_trial_id_from_study_id_trial_number(
                    study_id, trial.number
                )
                body = note_markdown(trial.number, OUTCOMES[trial.state], read(trial))
                with self.writing:
                    save_note(optuna.Trial(study, trial_id), body)
            noted.update(t.number for t in fresh)
            self.storage.set_study_system_attr(study_id, NOTED_ATTR, sorted(noted))
        if self._drawn.get(study.study_name) != len(finished):
            for graph_id, make in FIGURES.items():
                figure = make(trials)
                with self.writing:
                    save_plotly_graph_object(study, figure, graph_object_id=graph_id)
            self._drawn[study.study_name] = len(finished)
        return len(fresh)


# the storage reads through which optuna-dashboard's pages get a study's attributes
ATTRIBUTE_READS = ("get_study_system_attrs", "get_all_studies")


def reads_wait_for(storage: RetryingStorage, writing: threading.RLock) -> RetryingStorage:
    """`storage`, its reads of study attributes (where optuna-dashboard finds notes and
    figures) waiting while `writing` is held: a page never gets a half-written view."""

    def waiting(read: Any) -> Any:
        def read_when_written(*args: Any, **kwargs: Any) -> Any:
            with writing:
                return read(*args, **kwargs)

        return read_when_written

    for name in ATTRIBUTE_READS:
        setattr(storage, name, waiting(getattr(storage, name)))
    return storage


class Refresher(threading.Thread):
    """`DashboardViews.refresh` every `interval` seconds, on a storage of its own (the web
    server's requests wait for it only while it writes a view), until `stop()`."""

    def __init__(
        self, url: str, interval: float = REFRESH_S, writing: threading.RLock | None = None
    ):
        super().__init__(name="vae-tune dashboard views", daemon=True)
        self.url, self.interval = url, interval
        self.writing = writing or threading.RLock()
        self._stop_event = threading.Event()

    def run(self) -> None:
        storage = open_storage(self.url, must_exist=True)
        views = DashboardViews(storage, self.writing)
        try:
            while not self._stop_event.wait(self.interval):
                views.refresh_or_warn()
        finally:
            storage.close()

    def stop(self) -> None:
        self._stop_event.set()


def serve_dashboard(
    url: str,
    host: str,
    port: int,
    artifact_store: Any,
    refresh_s: float = REFRESH_S,
    on_ready: Any = None,
) -> None:
    """Write the VAE views of every study, then serve optuna-dashboard on `url` until
    interrupted, refreshing the views every `refresh_s` seconds."""
    from optuna_dashboard import run_server

    writing = threading.RLock()
    storage = reads_wait_for(open_storage(url, must_exist=True), writing)
    try:
        DashboardViews(storage, writing).refresh_or_warn()
        if on_ready is not None:
            on_ready()
        refresher = Refresher(url, refresh_s, writing)
        refresher.start()
        try:
            run_server(storage, host=host, port=port, artifact_store=artifact_store)
        finally:
            refresher.stop()
    finally:
        storage.close()
