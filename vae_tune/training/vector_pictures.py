"""Pictures of a VAE of table rows, where there are no images to show: what a researcher of
tabular or count data looks at.

- `reconstructions.png`: per feature, each validation example's value against its
  reconstruction (the mean of p(x|z) at the posterior mean), on the diagonal when perfect;
- `marginals.png`: per feature, the histogram of the data against that of decoded prior
  samples (the mean of p(x|z), z ~ p(z)): whether the model generates the data's marginals;
- `latent.png`: the posterior means of the validation examples in 2-D (the first two latent
  units, or their first two principal components beyond two), coloured by label.

All values are in the data's own units (a standardization is undone). Drawn with matplotlib's
non-interactive Agg canvas; each figure names the study or run it shows.
"""

from __future__ import annotations

import io
import math
import textwrap
from pathlib import Path

import numpy as np
import torch

from vae_tune.models.base import VAE
from vae_tune.models.likelihoods import Likelihood

MAX_FEATURES = 8  # panels per picture: the features with the largest variance first
MAX_POINTS = 1000


def _figure(rows: int, cols: int, caption: str, width: float = 2.6, height: float = 2.3):
    from matplotlib.figure import Figure  # the Agg canvas: no display, no global state

    lines = textwrap.wrap(caption, int(width * cols * 15))  # about 15 characters an inch
    top = 0.2 + 0.16 * len(lines)  # inches for the caption
    fig = Figure(figsize=(width * cols, height * rows + top), dpi=80)  # no layout engine: slow
    axes = fig.subplots(rows, cols, squeeze=False)
    fig.subplots_adjust(left=0.1, right=0.97, bottom=0.1, top=1 - top / (height * rows + top),
                        wspace=0.45, hspace=0.6)
    fig.suptitle("\n".join(lines), fontsize=8)
    return fig, axes


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _grid(n: int) -> tuple[int, int]:
    cols = min(4, n)
    return math.ceil(n / cols), cols


def _chosen(x: np.ndarray) -> list[int]:
    """The features to draw: all, or the MAX_FEATURES of largest variance."""
    order = np.argsort(-x.var(0), kind="stable")
    return sorted(order[:MAX_FEATURES].tolist())


def _reconstructions(x: np.ndarray, recon: np.ndarray, names: list[str], caption: str) -> bytes:
    features = _chosen(x)
    fig, axes = _figure(*_grid(len(features)), f"Reconstruction against truth: {caption}")
    for ax, j in zip(axes.flat, features, strict=False):
        ax.scatter(x[:, j], recon[:, j], s=4, alpha=0.5)
        lo, hi = float(min(x[:, j].min(), recon[:, j].min())), float(
            max(x[:, j].max(), recon[:, j].max())
        )
        ax.plot([lo, hi], [lo, hi], color="grey", linewidth=0.8)
        ax.set_title(names[j], fontsize=8)
        ax.set_xlabel("data", fontsize=7)
        ax.set_ylabel("reconstruction", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in axes.flat[len(features):]:
        ax.set_axis_off()
    return _png(fig)


def _marginals(x: np.ndarray, samples: np.ndarray, names: list[str], caption: str) -> bytes:
    features = _chosen(x)
    fig, axes = _figure(*_grid(len(features)), f"Marginals, data against prior samples: {caption}")
    for ax, j in zip(axes.flat, features, strict=False):
        both = np.concatenate([x[:, j], samples[:, j]])
        bins = np.histogram_bin_edges(both, bins=30)
        for values, label in ((x[:, j], "data"), (samples[:, j], "prior samples")):
            counts, _ = np.histogram(values, bins=bins, density=True)
            ax.stairs(counts, bins, fill=True, alpha=0.5, label=label)  # one artist, not 30
        ax.set_title(names[j], fontsize=8)
        ax.tick_params(labelsize=6)
    axes.flat[0].legend(fontsize=6)
    for ax in axes.flat[len(features):]:
        ax.set_axis_off()
    return _png(fig)


def _latent(z: np.ndarray, labels: np.ndarray | None, label_names: list[str] | None,
            caption: str) -> bytes:
    fig, axes = _figure(1, 1, f"Posterior means, coloured by label: {caption}", 5, 4.2)
    ax = axes[0, 0]
    if z.shape[1] > 2:
        from sklearn.decomposition import PCA

        z, axis = PCA(n_components=2).fit_transform(z), "principal component"
    else:
        axis = "z"
        z = z if z.shape[1] == 2 else np.concatenate([z, np.zeros_like(z)], 1)
    if labels is None:
        ax.scatter(z[:, 0], z[:, 1], s=5, alpha=0.6)
    else:
        for c in np.unique(labels):
            name = label_names[c] if label_names and c < len(label_names) else str(c)
            ax.scatter(*z[labels == c].T, s=5, alpha=0.6, label=name)
        ax.legend(fontsize=6, markerscale=2)
    ax.set_xlabel(f"{axis} 1", fontsize=7)
    ax.set_ylabel(f"{axis} 2", fontsize=7)
    return _png(fig)


@torch.no_grad()
def save_vector_pictures(
    model: VAE,
    likelihood: Likelihood,
    x: torch.Tensor,
    folder: Path,
    seed: int,
    caption: str,
    features: tuple[str, ...],
    labels: torch.Tensor | None = None,
    label_names: tuple[str, ...] | None = None,
) -> list[Path]:
    """Write the three pictures of a table model into `folder`; returns their paths."""
    was_training = model.training
    model.eval()
    x, y = x[:MAX_POINTS], None if labels is None else labels[:MAX_POINTS]
    z = model.code(x, y)
    recon = likelihood.mean(model.decode(z, y)).float()
    gen = torch.Generator(device=x.device).manual_seed(seed)
    prior = model.sample_prior(len(x), gen)
    samples = likelihood.mean(model.decode(prior, y)).float()  # a conditional's: y's mix
    model.train(was_training)
    flat = [likelihood.to_data(t.float()).flatten(1).cpu().numpy() for t in (x, recon, samples)]
    names = list(features)
    drawn = {
        "reconstructions.png": _reconstructions(flat[0], flat[1], names, caption),
        "marginals.png": _marginals(flat[0], flat[2], names, caption),
        "latent.png": _latent(
            z.flatten(1).float().cpu().numpy(),
            None if y is None else y.cpu().numpy(),
            list(label_names) if label_names else None,
            caption,
        ),
    }
    paths = []
    for name, data in drawn.items():
        (folder / name).write_bytes(data)
        paths.append(folder / name)
    return paths
