"""What optuna-dashboard shows beside Optuna's charts: a Markdown note on each finished trial
with its VAE diagnostics, and the rate–distortion and collapse figures on the study.

Both go through optuna-dashboard's public API (`save_note`, `save_plotly_graph_object`), so
`vae-tune dashboard` (or any optuna-dashboard on the same storage) shows them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna
from optuna_dashboard import save_note, save_plotly_graph_object

from tuner.figures import collapse_figure, rate_distortion_figure

FIGURES = {"rate-distortion": rate_distortion_figure, "collapse": collapse_figure}


def _num(value: Any, fmt: str = ".3f") -> str:
    return format(value, fmt) if isinstance(value, int | float) else "–"


def _cell(value: Any) -> str:
    """A Markdown table cell: a bare "|" (as in p(x|z)) would end the cell."""
    return str(value).replace("|", "\\|")


def note_markdown(number: int, outcome: str, attrs: Mapping[str, Any]) -> str:
    """A trial's diagnostics as a Markdown table (what a VAE researcher checks first)."""
    recon, kl = attrs.get("val_recon"), attrs.get("val_kl")
    elbo = recon - kl if isinstance(recon, float) and isinstance(kl, float) else None
    latent = len(attrs.get("kl_per_dim") or ()) or "?"  # every stochastic layer's units
    collapsed = attrs.get("posterior_collapse")
    rows = [
        ("validation ELBO (beta = 1)", f"{_num(elbo)} nats/example"),
        ("reconstruction E[log p(x|z)]", _num(recon)),
        ("rate: KL(q(z|x) ‖ p(z))", _num(kl)),
        ("KL estimate", attrs.get("kl_estimator", "–")),
        ("active units", f"{attrs.get('active_units', '–')} of {latent}"),
        ("posterior collapse", "**yes**" if collapsed else "no" if collapsed is not None else "–"),
    ]
    if attrs.get("conditional_classes"):  # its ELBO is of p(x|y), up to log C above p(x)'s
        rows.insert(
            1,
            (
                "conditional on the label",
                f"{attrs['conditional_classes']} classes: the ELBO bounds log p(x|y)",
            ),
        )
    if len(attrs.get("active_units_per_layer") or ()) > 1:
        rows.append(("active units per layer (z1 first)", attrs["active_units_per_layer"]))
    if "val_iw_nll" in attrs:
        rows.append((f"IW-NLL (k = {attrs.get('iw_samples')})", _num(attrs["val_iw_nll"])))
    rows += [
        ("epochs", attrs.get("epochs_run", "–")),
        ("device / precision", f"{attrs.get('device', '–')} / {attrs.get('precision', '–')}"),
        ("seconds (wall)", _num(attrs.get("wall_seconds"), ".1f")),
        ("training examples/s", _num(attrs.get("train_examples_per_s"), ",.0f")),
    ]
    if attrs.get("stop_reason"):
        rows.append(("stopped", attrs["stop_reason"]))
    table = "\n".join(f"| {_cell(name)} | {_cell(value)} |" for name, value in rows)
    return f"## Trial {number}: {outcome}\n\n| diagnostic | value |\n|---|---|\n{table}\n"


def save_trial_note(trial: optuna.Trial, outcome: str) -> None:
    save_note(trial, note_markdown(trial.number, outcome, trial.user_attrs))


def publish_figures(study: optuna.Study) -> None:
    """Store (overwrite) the study's VAE figures; call under the study lock, since the
    dashboard keeps a figure in several attributes that concurrent writers could interleave."""
    trials = study.get_trials(deepcopy=False)
    for graph_id, make in FIGURES.items():
        save_plotly_graph_object(study, make(trials), graph_object_id=graph_id)
