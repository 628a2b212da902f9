"""Posterior flows: q(z|x) as the encoder's Gaussian pushed through K invertible steps.

log q(z_K|x) = log N(z_0; mu, sigma^2) - sum_k log|det dz_k/dz_(k-1)|. Every step is
conditioned on a context h = (mu, logvar), the encoder's own Gaussian, so the flow is amortized
over x for any architecture without touching its encoder. The steps run in fp32 with autocast
off: a log-determinant is a sum of logs that bf16 would round away.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from vae_tune.models.losses import at_least_fp32

FlowKind = Literal["none", "planar", "iaf"]
IAF_GATE_BIAS = 2.0  # sigmoid(2) ~ 0.88: each IAF step starts close to the identity (Kingma 2016)


class PlanarStep(nn.Module):
    """Rezende & Mohamed 2015: z + u_hat tanh(w.z + b), where u_hat is u moved along w so that
    w.u_hat >= -1 and the step stays invertible. u, w and b are a linear function of the
    context, as in the paper, where the inference network outputs them."""

    def __init__(self, dim: int, context_dim: int):
        super().__init__()
        self.dim = dim
        self.params = nn.Linear(context_dim, 2 * dim + 1)

    def forward(self, z: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u, w, b = self.params(h).split([self.dim, self.dim, 1], dim=-1)
        wu = (w * u).sum(-1, keepdim=True)
        w_u_hat = F.softplus(wu) - 1.0  # the paper's m(w.u) > -1, and w.u_hat equals it
        u_hat = u + (w_u_hat - wu) * w / w.pow(2).sum(-1, keepdim=True).clamp_min(1e-12)
        a = torch.tanh((w * z).sum(-1, keepdim=True) + b)
        # det(I + u_hat psi^T) = 1 + psi.u_hat, psi = (1 - a^2) w: in (0, inf) as w.u_hat > -1
        log_det = torch.log1p((1.0 - a.pow(2)) * w_u_hat).squeeze(-1)
        return z + u_hat * a, log_det


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (MADE, Germain et al.)."""

    def __init__(self, in_features: int, out_features: int, mask: torch.Tensor):
        super().__init__(in_features, out_features)
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class IAFStep(nn.Module):
    """Kingma et al. 2016: [m, s] = MADE(z, h), sigma = sigmoid(s), and the numerically stable
    gated update z = sigma * z + (1 - sigma) * m, whose log-determinant is sum log sigma. Output
    j sees z_<j only (in this step's order; `reverse` flips it, so stacked steps alternate)."""

    def __init__(self, dim: int, context_dim: int, hidden: int, reverse: bool):
        super().__init__()
        order = torch.arange(1, dim + 1)
        if reverse:
            order = order.flip(0)
        degrees = torch.arange(hidden) % max(1, dim - 1) + 1  # hidden unit k sees z of order <= d_k
        self.inp = MaskedLinear(dim, hidden, degrees[:, None] >= order[None, :])
        self.ctx = nn.Linear(context_dim, hidden)  # the context is not masked: it is not z
        out_mask = order[:, None] > degrees[None, :]  # output j sees hidden units of degree < j
        self.out = MaskedLinear(hidden, 2 * dim, out_mask.repeat(2, 1))

    def forward(self, z: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m, s = self.out(F.elu(self.inp(z) + self.ctx(h))).chunk(2, dim=-1)
        gate = torch.sigmoid(s + IAF_GATE_BIAS)
        return gate * z + (1.0 - gate) * m, F.logsigmoid(s + IAF_GATE_BIAS).sum(-1)


class Flow(nn.Module):
    """K steps; no step (flow none, or length 0) is the identity and adds no parameters."""

    def __init__(self, steps: list[nn.Module]):
        super().__init__()
        self.steps = nn.ModuleList(steps)

    def __len__(self) -> int:
        return len(self.steps)

    def forward(self, z0: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z0 (... x B x L), context (B x C) -> z_K and sum_k log|det| (... x B), in fp32."""
        z, h = at_least_fp32(z0), at_least_fp32(context)
        log_det = torch.zeros(z.shape[:-1], device=z.device, dtype=z.dtype)
        if not self.steps:
            return z0, log_det
        with torch.autocast(z.device.type, enabled=False):
            for step in self.steps:
                z, step_log_det = step(z, h)
                log_det = log_det + step_log_det
        return z, log_det


def build_flow(kind: FlowKind, length: int, dim: int) -> Flow:
    """The flow a model config names, on `dim` latent units, with (mu, logvar) as context."""
    if kind == "none" or length == 0:
        return Flow([])
    if kind == "planar":
        return Flow([PlanarStep(dim, 2 * dim) for _ in range(length)])
    if kind == "iaf":
        hidden = max(16, 4 * dim)
        return Flow([IAFStep(dim, 2 * dim, hidden, reverse=i % 2 == 1) for i in range(length)])
    raise ValueError(f"unknown flow {kind!r}; known: none, planar, iaf")
