"""What a finished model is worth beyond its ELBO: importance-weighted NLL; image grids."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from vae_tune.models import VAE
from vae_tune.models.likelihoods import Likelihood
from vae_tune.models.losses import tile

MAX_DECODED = 2048  # images per decoder call in the IW-NLL: bounds its memory


@torch.no_grad()
def iw_log_px(
    model: VAE,
    likelihood: Likelihood,
    x: torch.Tensor,
    k: int,
    seed: int,
    batch_size: int = 256,
    chunk: int = 100,
    progress: Callable[[int], None] | None = None,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Importance-weighted estimates of log p(x) (Burda et al. 2016), one per example, float64.

    log p(x) >= log (1/k) sum_i p(x, z_i) / q(z_i|x); k = 1 is the ELBO and the bound tightens
    as k grows. The model's `posterior` gives log q(z|x) (a flow's log-determinants included:
    log N(z_0) - sum log|det|) and log p(z) (two layers: log p(z1|z2) + log p(z2)). Samples are
    drawn a chunk at a time, all images of a batch decoded together, and combined with a
    streaming log-sum-exp in float64, so memory stays bounded. `progress` sees the examples
    done. A conditional model estimates log p(x|y) from the images' `labels`.
    """
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=x.device).manual_seed(seed)
    out = []
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size]
        yb = None if labels is None else labels[start : start + batch_size]
        acc = torch.full((len(xb),), -math.inf, device=x.device, dtype=torch.float64)
        # at most MAX_DECODED images per decoder call: a conv decoder's activations for
        # chunk x batch = 25,600 MNIST images took 13 GB and got a worker OOM-killed
        step = max(1, min(chunk, MAX_DECODED // len(xb)))
        for done in range(0, k, step):
            m = min(step, k - done)
            drawn = model(xb, gen, m, yb)
            log_px = likelihood.log_prob(drawn.logits, tile(xb, m)).view(m, len(xb))
            post = drawn.posterior
            log_w = log_px.double() + (post.log_p - post.log_q).double()
            acc = torch.logaddexp(acc, torch.logsumexp(log_w, 0))
        out.append(acc - math.log(k))
        if progress is not None:
            progress(min(start + batch_size, len(x)))
    model.train(was_training)
    return torch.cat(out)


def iw_nll(
    model: VAE,
    likelihood: Likelihood,
    x: torch.Tensor,
    k: int,
    seed: int,
    batch_size: int = 256,
    chunk: int = 100,
    labels: torch.Tensor | None = None,
) -> float:
    """Importance-weighted NLL, nats per example: the mean of -`iw_log_px`."""
    log_px = iw_log_px(model, likelihood, x, k, seed, batch_size, chunk, labels=labels)
    return -log_px.mean().item()


def image_grid(images: torch.Tensor, cols: int, scale: int | None = None) -> Image.Image:
    """N x H x W in [0, 1] -> one greyscale picture, `cols` images a row, 1-pixel white gaps,
    enlarged `scale` times (default: small images up to about 256 pixels wide)."""
    n, h, w = images.shape
    rows = math.ceil(n / cols)
    canvas = np.ones((rows * (h + 1) + 1, cols * (w + 1) + 1), dtype=np.float32)
    for i, img in enumerate(images.clamp(0, 1).cpu().numpy()):
        r, c = divmod(i, cols)
        canvas[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = img
    picture = Image.fromarray((canvas * 255).round().astype(np.uint8), mode="L")
    if scale is None:
        scale = max(1, 256 // picture.width)  # 8x8 digits would be unreadably small
    return picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
