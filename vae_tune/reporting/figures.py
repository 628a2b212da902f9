"""The VAE views of a study as Plotly figures: the rate–distortion plane, collapse, learning
curves.

A beta-VAE trades rate (KL, nats the code carries) against distortion (−E[log p(x|z)]); the
validation ELBO is minus their sum, so trials of equal ELBO lie on one diagonal. Collapse shows
as active units far below the latent size. `vae-tune report` draws these, and the worker keeps
them on the study for optuna-dashboard (`vae_tune.reporting.dashboard_views`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState

from vae_tune.tuning.record import (
    elbo_curve,
    latent_units,
    rate_distortion,
    read,
    validation_elbo,
    with_diagnostics,
)

RATE = "rate: KL(q(z|x) ‖ p(z)) (nats/example)"
DISTORTION = "distortion: −E[log p(x|z)] (nats/example)"


def _or(value: object, default: object) -> object:
    return default if value is None else value


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats in both coordinates (both minimized), by rate."""
    front: list[tuple[float, float]] = []
    for rate, distortion in sorted(points):
        if not front or distortion < front[-1][1]:
            front.append((rate, distortion))
    return front


def _hover(t: FrozenTrial) -> str:
    r = read(t)
    c, model = r.config or {}, r.model
    elbo = validation_elbo(t)
    return (
        f"trial {t.number} ({t.state.name.lower()})<br>{model.get('architecture', '?')}, "
        f"latent {model.get('latent_dim', '?')}, beta {c.get('beta', float('nan')):.3g}<br>"
        f"ELBO {elbo:.2f}, {_or(r.active_units, '?')} active units"
    )


def _beta_marker(trials: Sequence[FrozenTrial], faint: bool, scale: bool) -> dict:
    betas = [(read(t).config or {}).get("beta", 1.0) for t in trials]
    marker: dict = {
        "color": [math.log10(b) for b in betas],
        "colorscale": "Viridis",
        "size": 9 if not faint else 7,
        "opacity": 0.25 if faint else 0.9,
        "line": {"width": 0.5, "color": "#333"},
        "cmin": -1,
        "cmax": 1,
    }
    if scale:
        ticks = [0.1, 0.25, 0.5, 1, 2, 4, 10]
        marker["colorbar"] = {
            "title": {"text": "beta"},
            "tickvals": [math.log10(v) for v in ticks],
            "ticktext": [f"{v:g}" for v in ticks],
        }
    return marker


def rate_distortion_figure(trials: Sequence[FrozenTrial]) -> go.Figure:
    """Every finished trial at (rate, distortion), coloured by beta; pruned ones faint; the
    Pareto front of the complete ones; dashed lines of equal validation ELBO."""
    finished = with_diagnostics(trials)
    complete = [t for t in finished if t.state == TrialState.COMPLETE]
    pruned = [t for t in finished if t.state == TrialState.PRUNED]
    fig = go.Figure()
    if finished:
        xs = [rate_distortion(t)[0] for t in finished]
        elbos = sorted(validation_elbo(t) for t in complete or finished)
        picks = sorted({elbos[-1], elbos[len(elbos) // 2], elbos[0]}, reverse=True)
        x0, x1 = 0.0, max(xs) * 1.05 + 1e-3
        for i, elbo in enumerate(picks):
            fig.add_trace(
                go.Scatter(
                    x=[x0, x1],
                    y=[-elbo - x0, -elbo - x1],
                    mode="lines",
                    line={"dash": "dash", "color": "#999", "width": 1},
                    name=f"ELBO = {elbo:.2f}",
                    legendgroup="elbo",
                    legendgrouptitle_text="equal ELBO" if i == 0 else None,
                    hoverinfo="name",
                )
            )
    for group, faint, name in ((pruned, True, "pruned"), (complete, False, "complete")):
        if group:
            fig.add_trace(
                go.Scatter(
                    x=[rate_distortion(t)[0] for t in group],
                    y=[rate_distortion(t)[1] for t in group],
                    mode="markers",
                    name=f"{name} ({len(group)})",
                    marker=_beta_marker(group, faint, scale=not faint),
                    text=[_hover(t) for t in group],
                    hovertemplate="%{text}<extra></extra>",
                )
            )
    front = pareto_front([rate_distortion(t) for t in complete])
    if len(front) > 1:
        fig.add_trace(
            go.Scatter(
                x=[p[0] for p in front],
                y=[p[1] for p in front],
                mode="lines",
                line={"shape": "hv", "color": "#d62728", "width": 1.5},
                name="Pareto front",
                hoverinfo="skip",
            )
        )
    fig.update_layout(
        title="Rate–distortion plane (validation set)",
        xaxis_title=RATE,
        yaxis_title=DISTORTION,
        legend={"orientation": "h", "y": -0.22},
        margin={"b": 110},
    )
    return fig


def collapse_figure(trials: Sequence[FrozenTrial]) -> go.Figure:
    """Active units against latent size: on the diagonal every unit carries information; at
    zero the posterior collapsed."""
    finished = with_diagnostics(trials)
    fig = go.Figure()
    sizes = [latent_units(t) for t in finished]
    top = max([s for s in sizes if s] or [1])
    fig.add_trace(
        go.Scatter(
            x=[0, top],
            y=[0, top],
            mode="lines",
            line={"dash": "dot", "color": "#999"},
            name="every unit active",
            hoverinfo="skip",
        )
    )
    for state, faint in ((TrialState.PRUNED, True), (TrialState.COMPLETE, False)):
        group = [t for t in finished if t.state == state]
        if group:
            fig.add_trace(
                go.Scatter(
                    x=[latent_units(t) for t in group],
                    y=[read(t).active_units or 0 for t in group],
                    mode="markers",
                    name=f"{state.name.lower()} ({len(group)})",
                    marker=_beta_marker(group, faint, scale=not faint),
                    text=[_hover(t) for t in group],
                    hovertemplate="%{text}<extra></extra>",
                )
            )
    fig.update_layout(
        title="Collapse: active units against latent size",
        xaxis_title="latent size (units of every stochastic layer)",
        yaxis_title="active units",
        legend={"orientation": "h", "y": -0.22},
        margin={"b": 110},
    )
    return fig


def learning_curves_figure(trials: Sequence[FrozenTrial]) -> go.Figure:
    """Validation ELBO per epoch of every finished trial; pruned ones faint."""
    fig = go.Figure()
    for t in trials:
        curve = elbo_curve(t)
        if not curve or t.state not in (TrialState.COMPLETE, TrialState.PRUNED):
            continue
        faint = t.state == TrialState.PRUNED
        fig.add_trace(
            go.Scatter(
                x=[e for e, _ in curve],
                y=[v for _, v in curve],
                mode="lines+markers",
                name=f"trial {t.number}",
                showlegend=False,
                opacity=0.3 if faint else 0.9,
                marker={"size": 4},
            )
        )
    fig.update_layout(
        title="Learning curves: validation ELBO per epoch (pruned trials faint)",
        xaxis_title="epoch",
        yaxis_title="validation ELBO (nats/example)",
    )
    return fig
