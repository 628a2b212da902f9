"""The exponential moving average of a run's weights: the model it evaluates and keeps.

Adam's iterates jitter around the optimum at the step size; their moving average sits nearer
to it (Polyak averaging). After the short runs a study affords, the averaged VAE's validation
ELBO is 1-1.5 nats better than the last iterate's (784-400-20 on MNIST, 8 epochs), for one
copy of the weights and a fused lerp every few steps. The averaging is torch's `AveragedModel`; the
decay warms up as TensorFlow's `ExponentialMovingAverage(num_updates=)` does,
min(decay, (1 + t) / (10 + t)) after t updates, so the first epochs of a short run are not
dominated by the initial weights.
"""

from __future__ import annotations

from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def decay_at(decay: float, steps: int) -> float:
    """The per-step decay after `steps` training steps (counted from 0), warmed up."""
    return min(decay, (1 + steps) / (10 + steps))


class WeightAverage:
    """An `AveragedModel` of the networks and the likelihood. `step()` after each optimizer
    step; the average folds the weights in every `EVERY` steps (and at `flush()`, at the end
    of an epoch) with the decay of those steps, decay_at ** steps: folding every step costs a
    pass over the weights and the Python of `update_parameters` (bench/results/throughput_ema.log
    measures it), every 4th step a quarter of that, for the same average in practice. The counts are
    Python numbers: no host sync."""

    EVERY = 4

    def __init__(self, model: nn.Module, likelihood: nn.Module, decay: float):
        self.decay = decay
        self.steps = 0  # optimizer steps taken
        self.folded = 0  # steps taken when the weights were last folded in
        self._source = nn.ModuleList([model, likelihood])  # the live weights, not a copy
        self.averaged = AveragedModel(self._source, use_buffers=True)  # a copy

    def step(self) -> None:
        self.steps += 1
        if self.steps - self.folded >= self.EVERY:
            self.flush()

    def flush(self) -> None:
        """Fold the live weights in, for the steps since the last fold."""
        pending = self.steps - self.folded
        if not pending:
            return
        decay = decay_at(self.decay, self.steps - 1) ** pending
        self.averaged.multi_avg_fn = get_ema_multi_avg_fn(decay)
        self.averaged.update_parameters(self._source)
        self.folded = self.steps

    @property
    def model(self) -> nn.Module:
        return self.averaged.module[0]

    @property
    def likelihood(self) -> nn.Module:
        return self.averaged.module[1]

    def state_dict(self) -> dict:
        return {"averaged": self.averaged.state_dict(), "steps": self.steps, "folded": self.folded}

    def load_state_dict(self, state: dict) -> None:
        self.averaged.load_state_dict(state["averaged"])
        self.steps, self.folded = state["steps"], state["folded"]
