"""Plotly pictures of a study in one self-contained HTML file."""

from __future__ import annotations

import html
from pathlib import Path

import optuna
from optuna import visualization as vis
from optuna.trial import TrialState

from tuner.errors import UserError
from tuner.files import check_writable, write_atomic


def write_report(study: optuna.Study, path: Path) -> list[str]:
    """Write the figures that the study's trials allow; return their titles."""
    check_writable(path)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise UserError(f"study {study.study_name!r} has no complete trial to draw", "study_name")
    figures = {
        "optimization history": vis.plot_optimization_history(study),
        "learning curves (validation ELBO per epoch)": vis.plot_intermediate_values(study),
        "parallel coordinates": vis.plot_parallel_coordinate(study),
    }
    if len(complete) >= 2:
        try:
            figures["hyperparameter importances"] = vis.plot_param_importances(study)
        except (RuntimeError, ValueError):
            pass  # too few distinct trials for an importance estimate
    parts = [f"<h1>vae-tune report: {html.escape(study.study_name)}</h1>"]
    for i, (title, fig) in enumerate(figures.items()):
        fig.update_layout(title=title)
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0)))
    title = html.escape(f"vae-tune report: {study.study_name}")
    write_atomic(
        path,
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{title}</title></head>"
        "<body>" + "".join(parts) + "</body></html>",
    )
    return list(figures)
