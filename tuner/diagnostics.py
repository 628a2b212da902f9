"""What a finished model is worth beyond its ELBO: importance-weighted NLL and pictures."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from models import VAE
from models.likelihoods import Likelihood
from models.losses import tile


@torch.no_grad()
def iw_nll(
    model: VAE,
    likelihood: Likelihood,
    x: torch.Tensor,
    k: int,
    seed: int,
    batch_size: int = 256,
    chunk: int = 100,
) -> float:
    """Importance-weighted estimate of -log p(x) (Burda et al. 2016), nats per example.

    log p(x) >= log (1/k) sum_i p(x, z_i) / q(z_i|x); k = 1 is the ELBO and the bound tightens
    as k grows. The model's `posterior` gives log q(z|x) (a flow's log-determinants included:
    log N(z_0) - sum log|det|) and log p(z) (two layers: log p(z1|z2) + log p(z2)). Samples are
    drawn `chunk` at a time and combined with a streaming log-sum-exp, so memory stays bounded.
    """
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=x.device).manual_seed(seed)
    total = torch.zeros((), device=x.device, dtype=torch.float64)
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size]
        acc = torch.full((len(xb),), -math.inf, device=x.device, dtype=torch.float64)
        for done in range(0, k, chunk):
            m = min(chunk, k - done)
            out = model(xb, gen, m)
            log_px = likelihood.log_prob(out.logits, tile(xb, m)).view(m, len(xb))
            post = out.posterior
            log_w = log_px.double() + (post.log_p - post.log_q).double()
            acc = torch.logaddexp(acc, torch.logsumexp(log_w, 0))
        total += (acc - math.log(k)).sum()
    model.train(was_training)
    return -total.item() / len(x)


def _grid(images: torch.Tensor, cols: int) -> Image.Image:
    """N x H x W in [0, 1] -> one greyscale picture, `cols` images a row, 1-pixel gaps."""
    n, h, w = images.shape
    rows = math.ceil(n / cols)
    canvas = np.ones((rows * (h + 1) + 1, cols * (w + 1) + 1), dtype=np.float32)
    for i, img in enumerate(images.clamp(0, 1).cpu().numpy()):
        r, c = divmod(i, cols)
        canvas[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = img
    picture = Image.fromarray((canvas * 255).round().astype(np.uint8), mode="L")
    scale = max(1, 256 // picture.width)  # 8x8 digits would be unreadably small
    return picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)


@torch.no_grad()
def save_pictures(
    model: VAE, likelihood: Likelihood, x: torch.Tensor, folder: Path, seed: int, n: int = 8
) -> list[Path]:
    """Write reconstructions (originals above, reconstructions below) and prior samples."""
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=x.device).manual_seed(seed)
    originals = x[:n]
    recon = likelihood.mean(model.decode(model.code(originals)))
    samples = likelihood.mean(model.decode(model.sample_prior(n * n, gen)))
    model.train(was_training)
    paths = [folder / "reconstructions.png", folder / "samples.png"]
    _grid(torch.cat([originals, recon]), cols=len(originals)).save(paths[0])
    _grid(samples, cols=n).save(paths[1])
    return paths
