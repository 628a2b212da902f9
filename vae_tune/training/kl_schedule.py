"""The KL weight at each training step: beta times an annealing factor in [0, 1].

Plain Python on the step counter (no tensor, so no host sync in the training loop):
- none: beta throughout;
- linear: from 0 to beta over the first `warmup_epochs` (0: beta throughout), the warm-up
  vae-tune always had;
- cyclical: Fu et al. 2019: the run splits into `kl_cycles` cycles; within each, the weight
  rises linearly from 0 over the first `kl_ratio` of it, then stays at beta.
"""

from __future__ import annotations

import math

from vae_tune.training.config import TrainingKnobs


def kl_weight(knobs: TrainingKnobs, step: int, steps_per_epoch: int, epochs: int) -> float:
    """The KL weight of training step `step` (1-based) of a run of `epochs` epochs."""
    if knobs.kl_schedule == "linear" and knobs.warmup_epochs:
        return knobs.beta * min(1.0, step / (knobs.warmup_epochs * steps_per_epoch))
    if knobs.kl_schedule == "cyclical":
        period = epochs * steps_per_epoch / knobs.kl_cycles  # T / M
        tau = ((step - 1) % math.ceil(period)) / period
        return knobs.beta * min(1.0, tau / knobs.kl_ratio)
    return knobs.beta
