"""The Markdown note optuna-dashboard shows on each finished trial: its VAE diagnostics, read
from the trial's record (what a VAE researcher checks first). `vae-tune dashboard` stores it
(`vae_tune.reporting.dashboard_views`).
"""

from __future__ import annotations

from typing import Any

from vae_tune.tuning.record import TrialRecord


def _num(value: Any, fmt: str = ".3f") -> str:
    return format(value, fmt) if isinstance(value, int | float) else "–"


def _cell(value: Any) -> str:
    """A Markdown table cell: a bare "|" (as in p(x|z)) would end the cell."""
    return str(value).replace("|", "\\|")


def note_markdown(number: int, outcome: str, r: TrialRecord) -> str:
    """A trial's diagnostics as a Markdown table."""
    elbo = r.val_recon - r.val_kl if r.diagnosed else None  # type: ignore[operator]
    latent = len(r.kl_per_dim or ()) or "?"  # every stochastic layer's units
    collapsed = r.posterior_collapse
    rows: list[tuple[str, Any]] = [
        ("validation ELBO (beta = 1)", f"{_num(elbo)} nats/example"),
        ("reconstruction E[log p(x|z)]", _num(r.val_recon)),
        ("rate: KL(q(z|x) ‖ p(z))", _num(r.val_kl)),
        ("KL estimate", r.kl_estimator or "–"),
        ("active units", f"{_num(r.active_units, 'd')} of {latent}"),
        ("posterior collapse", "**yes**" if collapsed else "no" if collapsed is not None else "–"),
    ]
    if r.conditional_classes:  # its ELBO is of p(x|y), up to log C above p(x)'s
        rows.insert(
            1,
            (
                "conditional on the label",
                f"{r.conditional_classes} classes: the ELBO bounds log p(x|y)",
            ),
        )
    if len(r.active_units_per_layer or ()) > 1:
        rows.append(("active units per layer (z1 first)", r.active_units_per_layer))
    if r.val_iw_nll is not None:
        rows.append((f"IW-NLL (k = {r.iw_samples})", _num(r.val_iw_nll)))
    rows += [
        ("epochs", r.epochs_run if r.epochs_run is not None else "–"),
        ("device / precision", f"{r.device or '–'} / {r.precision or '–'}"),
        ("seconds (wall)", _num(r.wall_seconds, ".1f")),
        ("training examples/s", _num(r.train_examples_per_s, ",.0f")),
    ]
    if r.stop_reason:
        rows.append(("stopped", r.stop_reason))
    table = "\n".join(f"| {_cell(name)} | {_cell(value)} |" for name, value in rows)
    return f"## Trial {number}: {outcome}\n\n| diagnostic | value |\n|---|---|\n{table}\n"
