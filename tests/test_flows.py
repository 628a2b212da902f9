"""Posterior flows: exact log-determinants, no change at K = 0, and every bound and diagnostic
uses log q(z_K|x) = log N(z_0) - sum log|det|."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch.autograd.functional import jacobian

from vae_tune.data import load_splits
from vae_tune.models import build_model
from vae_tune.models.flows import IAFStep, PlanarStep, build_flow
from vae_tune.models.likelihoods import Bernoulli
from vae_tune.models.losses import log_normal, log_standard_normal, reparameterize, tile
from vae_tune.training.config import DatasetSpec, LikelihoodSpec, RunConfig
from vae_tune.training.diagnostics import iw_nll
from vae_tune.training.trainer import evaluate, train

TINY = DatasetSpec(name="digits", subset=200)


def _config(model: dict[str, Any], **kw: Any) -> RunConfig:
    base = dict(
        dataset=TINY,
        model=model,
        likelihood=LikelihoodSpec(binarize="dynamic"),
        epochs=2,
        seed=1,
        device="cpu",
        threads=1,
    )
    return RunConfig(**{**base, **kw})


def _numerical_log_det(f, z: torch.Tensor) -> float:
    return torch.linalg.slogdet(jacobian(f, z))[1].item()


@pytest.mark.parametrize("kind", ["planar", "iaf"])
def test_each_flow_log_det_matches_the_numerical_jacobian(kind: str):
    torch.manual_seed(0)
    dim = 5
    flow = build_flow(kind, 3, dim).double()
    for step in flow.steps:  # stronger than at initialization, so the test has teeth
        for p in step.parameters():
            p.data.mul_(2.0)
    context = torch.randn(1, 2 * dim, dtype=torch.float64)
    changes = []
    for _ in range(4):
        z = torch.randn(dim, dtype=torch.float64)
        for step in [*flow.steps, flow]:  # each step, then the whole flow
            _, log_det = step(z[None], context)

            def f(v: torch.Tensor, step=step) -> torch.Tensor:
                return step(v[None], context)[0][0]

            numerical = _numerical_log_det(f, z)
            assert log_det.item() == pytest.approx(numerical, abs=1e-9)
            changes.append(abs(numerical))
    assert max(changes) > 0.1  # the flow really changes volume: the test has teeth


def test_planar_steps_are_invertible_and_iaf_is_autoregressive():
    torch.manual_seed(1)
    dim = 4
    planar = PlanarStep(dim, 2 * dim).double()
    planar.params.weight.data.mul_(10.0)  # u and w far from the constraint's comfort zone
    h = torch.randn(64, 2 * dim, dtype=torch.float64)
    u, w, _ = planar.params(h).split([dim, dim, 1], dim=-1)
    wu = (w * u).sum(-1, keepdim=True)
    u_hat = u + (torch.nn.functional.softplus(wu) - 1 - wu) * w / w.pow(2).sum(-1, keepdim=True)
    assert ((w * u_hat).sum(-1) > -1 - 1e-9).all()  # Rezende & Mohamed's condition
    assert ((w * u).sum(-1) < -1).any()  # ... which u alone broke
    _, log_det = planar(torch.randn(64, dim, dtype=torch.float64), h)
    assert torch.isfinite(log_det).all()

    for reverse in (False, True):
        step = IAFStep(dim, 2 * dim, 16, reverse).double()
        z = torch.randn(dim, dtype=torch.float64)
        jac = jacobian(lambda v, s=step: s(v[None], h[:1])[0][0], z)
        later = torch.ones(dim, dim, dtype=torch.bool).triu(1)  # output i, input j > i
        if reverse:
            later = later.T
        assert (jac[later] == 0).all()  # output i never sees a later z
        assert (jac[~later].abs() > 0).any()


def _same_run(a, b) -> None:
    assert [h.val for h in a.history] == [h.val for h in b.history]
    assert [h.train_loss for h in a.history] == [h.train_loss for h in b.history]
    wa, wb = a.model.state_dict(), b.model.state_dict()
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize(
    "model",
    [
        {"architecture": "mlp", "latent_dim": 4, "hidden_dim": 16, "dropout": 0.2},
        {
            "architecture": "hierarchical",
            "latent_dim": 4,
            "hidden_dim": 16,
            "z2_dim": 2,
            "z2_hidden_dim": 8,
            "depth": 1,
        },
    ],
    ids=["mlp", "hierarchical"],
)
def test_a_flow_of_length_zero_is_the_plain_model_exactly(model: dict[str, Any]):
    plain = train(_config(model))
    for kind in ("planar", "iaf"):
        _same_run(plain, train(_config({**model, "flow": kind, "flow_length": 0})))
    _same_run(plain, train(_config({**model, "flow": "none", "flow_length": 5})))
    with_flow = train(_config({**model, "flow": "iaf", "flow_length": 2}))
    assert with_flow.final.train_loss != plain.final.train_loss


def _exact_nll(model, x: torch.Tensor) -> float:
    """-log p(x) of a 1-D latent model by quadrature: log sum_z p(x|z) N(z) dz."""
    z = torch.linspace(-10, 10, 8001, dtype=torch.float64)[:, None]
    logits = model.decode(z)
    log_px = torch.stack([Bernoulli().log_prob(logits, xi.expand_as(logits)) for xi in x], 1)
    log_pz = log_standard_normal(z)
    log_px_sum = torch.logsumexp(log_px + log_pz, 0) + math.log(z[1, 0] - z[0, 0])
    return -log_px_sum.mean().item()


def _iw_nll_by_hand(model, x: torch.Tensor, k: int, with_log_det: bool) -> float:
    """The IW-NLL written out, optionally with the flow's log-determinant left out of log q."""
    gen = torch.Generator().manual_seed(4)
    mu, logvar = model.encode(x)
    z0 = reparameterize(mu.expand(k, *mu.shape), logvar.expand(k, *mu.shape), gen)
    z, log_det = model.flow(z0, torch.cat([mu, logvar], -1))
    log_q = log_normal(z0, mu, logvar).sum(-1) - (log_det if with_log_det else 0)
    log_px = Bernoulli().log_prob(model.decode(z.flatten(0, 1)), tile(x, k)).view(k, len(x))
    log_w = log_px + log_standard_normal(z).sum(-1) - log_q
    return -(torch.logsumexp(log_w, 0) - math.log(k)).mean().item()


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["planar", "iaf"])
def test_iw_nll_of_a_flow_posterior_converges_to_the_exact_likelihood(kind: str):
    """With a 1-D latent, log p(x) is a quadrature. The IW-NLL gets there only because log q(z|x)
    includes the flow's log-determinant: without it, the same estimate misses by far."""
    torch.manual_seed(3)
    config = {"architecture": "mlp", "latent_dim": 1, "hidden_dim": 8, "flow": kind}
    model = build_model(config, (2, 3)).double()
    for p in model.flow.parameters():
        p.data.mul_(3.0)
    gen = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((6, 2, 3), 0.5, dtype=torch.float64), generator=gen)
    with torch.no_grad():
        exact = _exact_nll(model, x)
        nll = iw_nll(model, Bernoulli(), x, 100_000, seed=2, chunk=5000)
        without_log_det = _iw_nll_by_hand(model, x, 100_000, with_log_det=False)
    assert nll == pytest.approx(exact, abs=0.005)
    assert abs(without_log_det - exact) > 0.2


def test_validation_elbo_with_a_flow_is_the_one_sample_bound_iw_nll_uses():
    """The ELBO `evaluate` reports (recon - Monte-Carlo KL, log-dets included) is the k = 1
    importance-weighted bound on the same noise, and below log p(x)."""
    config = _config({"architecture": "mlp", "latent_dim": 4, "hidden_dim": 16, "flow": "iaf"})
    run = train(config)
    x = load_splits(config.dataset, 0).val[:150].round()
    val = evaluate(run.model, run.likelihood, x, 64, seed=9)
    assert val.elbo == pytest.approx(val.recon - val.kl)
    assert -val.elbo == pytest.approx(iw_nll(run.model, run.likelihood, x, 1, 9, 64), abs=1e-4)
    assert -val.elbo > iw_nll(run.model, run.likelihood, x, 500, 9)
    assert len(val.kl_per_dim) == 4 and val.active_units_per_layer == (val.active_units,)
    assert run.model.kl_estimator == "monte carlo"
    plain = build_model({"architecture": "mlp", "flow": "iaf", "flow_length": 0}, (8, 8))
    assert plain.kl_estimator == "closed form"
