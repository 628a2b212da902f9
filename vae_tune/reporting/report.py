"""`vae-tune report`: one self-contained HTML page about a study, as a VAE researcher reads it.

The rate–distortion plane, collapse (active units against latent size), outcomes with their
reasons, learning curves, Optuna's history, importances, parallel coordinates and slices, and
the best trial's pictures inline. plotly.js is embedded (the page works offline); every string
that comes from the user (study name, parameters, reasons) is escaped.
"""

from __future__ import annotations

import base64
import html
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import optuna
import plotly.graph_objects as go
from optuna import visualization as vis
from optuna.artifacts import get_all_artifact_meta
from optuna.trial import FrozenTrial, TrialState

from vae_tune.errors import UserError
from vae_tune.files import check_writable, write_atomic
from vae_tune.reporting.figures import (
    collapse_figure,
    learning_curves_figure,
    rate_distortion_figure,
)
from vae_tune.tuning.artifacts import open_artifact_store
from vae_tune.tuning.record import collapse_count, read, validation_elbo
from vae_tune.tuning.storage import open_storage
from vae_tune.tuning.study import baseline_summary, best_trial, load_vae_study, time_summary

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1100px;color:#222}
h1{font-size:1.6em} h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0} td,th{padding:.2em .8em;text-align:left;
border-bottom:1px solid #eee} .meta{color:#555} .pictures img{image-rendering:pixelated;
margin:.3em 1em .3em 0;border:1px solid #ccc;width:420px} .figure{min-height:460px}
.pictures figure{display:inline-block;vertical-align:top}
"""


def _e(value: object) -> str:
    return html.escape(str(value))


def _table(rows: list[tuple[object, ...]], head: tuple[str, ...]) -> str:
    cells = "".join("<th>" + _e(h) + "</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{cells}</tr>{body}</table>"


def _outcomes(trials: list[FrozenTrial]) -> str:
    """Trials by state, how many collapsed, and why trials were pruned or failed."""
    states = Counter(t.state.name.lower() for t in trials)
    collapsed, judged = collapse_count(trials)
    rows: list[tuple[object, ...]] = [(s, n) for s, n in sorted(states.items())]
    rows.append(
        (
            "collapsed (no active units), of the completed or stopped for collapse",
            f"{collapsed} of {judged}",
        )
    )
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}

    def reason(t: FrozenTrial) -> str | None:
        r = read(t)
        said = r.stop_reason or r.fail_reason
        if not said and t.number in retried:
            return "its worker stopped (no heartbeat or Ctrl-C); retried from its checkpoint"
        return said

    reasons = Counter(
        (t.state.name.lower(), reason(t))
        for t in trials
        if t.state in (TrialState.PRUNED, TrialState.FAIL)
    )
    why = [(state, reason or "(no reason recorded)", n) for (state, reason), n in reasons.items()]
    return _table(rows, ("outcome", "trials")) + (
        _table(sorted(why), ("state", "reason", "trials")) if why else ""
    )


def _pictures(trial: FrozenTrial, storage: optuna.storages.BaseStorage, store) -> str:
    """The trial's PNG artifacts as data URIs (missing files are named, not fatal)."""
    parts = []
    for meta in get_all_artifact_meta(trial, storage=storage):
        if meta.mimetype != "image/png":
            continue
        try:
            with store.open_reader(meta.artifact_id) as reader:
                data = base64.b64encode(reader.read()).decode()
        except Exception:  # noqa: BLE001 - a deleted artifact folder should not sink the report
            parts.append(f"<p>{_e(meta.filename)}: file not found in the artifact store</p>")
            continue
        parts.append(
            f"<figure><img alt='{_e(meta.filename)}' "
            f"src='data:image/png;base64,{data}'><figcaption>{_e(meta.filename)}"
            "</figcaption></figure>"
        )
    return "<div class='pictures'>" + "".join(parts) + "</div>" if parts else ""


def _best(trial: FrozenTrial) -> str:
    a = read(trial)
    nan = float("nan")
    rows: list[tuple[object, ...]] = [
        ("validation ELBO (nats/example)", f"{validation_elbo(trial):.3f}"),
        ("rate: KL (nats/example)", f"{nan if a.val_kl is None else a.val_kl:.3f}"),
        ("KL estimate", a.kl_estimator or "closed form"),
        ("reconstruction E[log p(x|z)]", f"{nan if a.val_recon is None else a.val_recon:.3f}"),
        ("active units", a.active_units),
    ]
    if len(a.active_units_per_layer or ()) > 1:
        rows.append(("active units per layer (z1 first)", a.active_units_per_layer))
    if a.val_iw_nll is not None:
        rows.append((f"IW-NLL, k={a.iw_samples}", f"{a.val_iw_nll:.3f}"))
    rows += [
        ("epochs", a.epochs_run),
        ("device / precision", f"{a.device} / {a.precision}"),
    ]
    rows += [(name, f"{v:.4g}" if isinstance(v, float) else v) for name, v in trial.params.items()]
    return f"<p>trial {trial.number}</p>" + _table(rows, ("", "value"))


def _optuna_figures(study: optuna.Study, n_complete: int) -> dict[str, Callable[[], go.Figure]]:
    """Optuna's own plots, on the validation ELBO (also for a rate–distortion study)."""
    multi = len(study.directions) > 1
    target = {"target": validation_elbo, "target_name": "validation ELBO"} if multi else {}
    figures: dict[str, Callable[[], go.Figure]] = {}
    if multi:
        figures["Pareto front (validation rate and distortion)"] = lambda: vis.plot_pareto_front(
            study, target_names=["rate (KL)", "distortion"]
        )
    else:
        figures["Optimization history"] = lambda: vis.plot_optimization_history(study)
    if n_complete >= 2:
        # Optuna's evaluator ranks what achieves *low* targets: give it the ELBO's negative
        loss = {"target": lambda t: -validation_elbo(t), "target_name": "negative ELBO"}
        figures["Hyperparameter importances"] = lambda: vis.plot_param_importances(
            study, **(loss if multi else {})
        )
    figures["Parallel coordinates"] = lambda: vis.plot_parallel_coordinate(study, **target)
    figures["Slices: validation ELBO against each parameter"] = lambda: vis.plot_slice(
        study, **target
    )
    return figures


def write_report(
    study_name: str, storage_url: str, path: Path, artifact_dir: str | None = None
) -> list[str]:
    """Write the report of a study; return the titles of the figures it holds."""
    check_writable(path)
    storage = open_storage(storage_url, must_exist=True)
    try:
        study = load_vae_study(study_name, storage_url, storage)
        trials = study.get_trials(deepcopy=False)
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        if not complete:
            raise UserError(f"study {study_name!r} has no complete trial to draw", "study_name")
        best = best_trial(study)
        said = baseline_summary(study)
        baseline = f"<p>{_e(said)}</p>" if said else ""
        timed = time_summary(study)
        timing = f"<p>{_e(timed)}</p>" if timed else ""
        store = open_artifact_store(storage_url, artifact_dir, create=False)
        pictures = _pictures(best, storage, store)
        figures: dict[str, Callable[[], go.Figure]] = {
            "Rate–distortion plane": lambda: rate_distortion_figure(trials),
            "Collapse: active units against latent size": lambda: collapse_figure(trials),
            "Learning curves": lambda: learning_curves_figure(trials),
            **_optuna_figures(study, len(complete)),
        }
        body, drawn = [], []
        for title, make in figures.items():
            try:
                with warnings.catch_warnings():  # the evaluator's remarks on its own inputs
                    warnings.filterwarnings("ignore", "PedAnovaImportanceEvaluator|Some regimes")
                    fig = make()
            except (RuntimeError, ValueError):
                continue  # e.g. too few distinct trials for an importance estimate
            fig.update_layout(title=None, height=460)  # the heading names it
            body.append(
                f"<h2>{_e(title)}</h2><div class='figure'>"
                + fig.to_html(full_html=False, include_plotlyjs=not drawn)
                + "</div>"
            )
            drawn.append(title)
        spec = study.user_attrs.get("spec") or {}
        objective = study.user_attrs.get("objective", "")
        meta = (
            f"{len(trials)} trials; dataset {_e((spec.get('dataset') or {}).get('name'))}; "
            f"sampler {_e((spec.get('sampler') or {}).get('name'))}, pruner "
            f"{_e((spec.get('pruner') or {}).get('name'))}; objective: {_e(objective)}"
        )
        title = _e(f"vae-tune report: {study_name}")
        page = (
            "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>{title}</title><style>{_STYLE}</style></head><body>"
            f"<h1>{title}</h1><p class='meta'>{meta}</p>"
            f"<h2>Outcomes</h2>{_outcomes(trials)}{timing}"
            f"<h2>Best trial (by validation ELBO)</h2>{baseline}{_best(best)}{pictures}"
            + "".join(body)
            + "</body></html>"
        )
    finally:
        storage.close()
    write_atomic(path, page)
    return drawn
