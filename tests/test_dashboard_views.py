"""The VAE views the dashboard writes (notes, figures): each once, and only what changed."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from pathlib import Path

import optuna
import pytest

from vae_tune.reporting.dashboard_views import NOTED_ATTR, DashboardViews, reads_wait_for
from vae_tune.tuning import record
from vae_tune.tuning.storage import open_storage


def _trials(study: optuna.Study, n: int) -> None:
    def objective(trial: optuna.Trial) -> float:
        recon, kl = -80.0 - trial.number, 10.0
        record.write(trial, val_recon=recon, val_kl=kl, kl_per_dim=[5.0, 5.0], active_units=2)
        if trial.number % 3 == 2:
            raise optuna.TrialPruned
        return recon - kl

    study.optimize(objective, n_trials=n)


def noted(storage) -> list[int]:
    return storage.get_study_system_attrs(storage.get_study_id_from_name("s"))[NOTED_ATTR]


def test_views_note_each_finished_trial_once_and_redraw_only_on_change(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'views.db'}"
    storage = open_storage(url)
    try:
        study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
        study.enqueue_trial({})
        study.ask()  # a RUNNING trial gets no note yet
        _trials(study, 3)
        views = DashboardViews(storage)
        assert views.refresh() == 3  # 2 complete, 1 pruned
        assert noted(storage) == [1, 2, 3]
        assert views.refresh() == 0  # nothing new: nothing written
        _trials(study, 2)
        assert views.refresh() == 2
        assert noted(storage) == [1, 2, 3, 4, 5]
        assert DashboardViews(storage).refresh() == 0  # a new dashboard reads what is noted
    finally:
        storage.close()


def test_a_page_read_while_a_figure_is_written_gets_the_whole_figure(tmp_path: Path):
    """optuna-dashboard writes a figure as several attributes; the dashboard's page reads wait
    for the refresher to finish one, instead of reading JSON cut in half."""
    url = f"sqlite:///{tmp_path / 'views.db'}"
    writer, reader = open_storage(url), open_storage(url)
    writing = threading.RLock()
    page = reads_wait_for(reader, writing)
    read: list[dict] = []  # the study's attributes, as each kind of read got them
    readers: list[threading.Thread] = []
    try:
        study = optuna.create_study(study_name="s", storage=writer, direction="maximize")
        _trials(study, 3)
        write_attr = writer.set_study_system_attr

        def set_study_system_attr(study_id, key, value):
            write_attr(study_id, key, value)
            if "rate-distortion" in key and not readers:  # the first part of the figure
                for how in (
                    lambda: page.get_study_system_attrs(study_id),
                    lambda: page.get_all_studies()[0].system_attrs,  # optuna-dashboard's
                ):
                    readers.append(threading.Thread(target=lambda how=how: read.append(how())))
                    readers[-1].start()
                    readers[-1].join(timeout=1)  # a page asking now, with the rest unwritten

        writer.set_study_system_attr = set_study_system_attr
        DashboardViews(writer, writing).refresh()
        for thread in readers:
            thread.join(timeout=60)

        def figure(attrs: dict) -> dict:
            return {k: v for k, v in attrs.items() if "rate-distortion" in k}

        final = figure(writer.get_study_system_attrs(study._study_id))
        assert len(final) > 1  # the figure takes several attributes
        assert len(read) == 2 and all(figure(attrs) == final for attrs in read)
    finally:
        writer.close()
        reader.close()


WORKER_MODULES = """
import sys
import vae_tune.api, vae_tune.cli, vae_tune.runner.launcher, vae_tune.runner.pool
import vae_tune.runner.worker, vae_tune.tuning.objective
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"plotly", "optuna_dashboard", "pandas"})
print(",".join(heavy) or "none")
"""


def test_the_worker_and_api_modules_import_neither_plotly_nor_the_dashboard():
    out = subprocess.run(
        [sys.executable, "-c", WORKER_MODULES], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "none"


@pytest.mark.integration
def test_a_worker_running_a_trial_never_imports_plotly_or_the_dashboard(write_spec):
    spec = write_spec({"budget": {"n_trials": 1}})
    code = (
        "import sys; from vae_tune.cli import app\n"
        f"try: app(['run', {str(spec)!r}])\n"
        "except SystemExit as e: assert e.code == 0, e.code\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'plotly', 'optuna_dashboard'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


class _Refusing:
    """A storage that refuses every read (a dashboard on a database it cannot use)."""

    def get_all_studies(self):
        raise PermissionError("read-only")


def test_a_failing_refresh_warns_once_and_never_raises(caplog):
    views = DashboardViews(_Refusing())
    with caplog.at_level(logging.DEBUG, logger="vae_tune"):
        views.refresh_or_warn()
        views.refresh_or_warn()
    levels = [r.levelno for r in caplog.records if "notes and figures" in r.getMessage()]
    assert levels == [logging.WARNING, logging.DEBUG]
