"""The study's VAE figures for optuna-dashboard beside Optuna's charts: the rate–distortion
plane and collapse, stored through optuna-dashboard's public `save_plotly_graph_object`. The
per-trial notes are `vae_tune.tuning.notes`.
"""

from __future__ import annotations

import optuna

from vae_tune.reporting.figures import collapse_figure, rate_distortion_figure

FIGURES = {"rate-distortion": rate_distortion_figure, "collapse": collapse_figure}


def publish_figures(study: optuna.Study) -> None:
    """Store (overwrite) the study's VAE figures; call under the study lock, since the
    dashboard keeps a figure in several attributes that concurrent writers could interleave."""
    # optuna-dashboard's package imports its whole web app (2 s): only when figures are stored
    from optuna_dashboard import save_plotly_graph_object

    trials = study.get_trials(deepcopy=False)
    for graph_id, make in FIGURES.items():
        save_plotly_graph_object(study, make(trials), graph_object_id=graph_id)
