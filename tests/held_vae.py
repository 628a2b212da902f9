"""An MLP VAE whose trial holds at its second validation until the file named in
`$VAE_TUNE_TEST_GATE` exists (no variable: it never holds). While it holds, the file
`<gate>.held-<pid>` says so.

A test that kills, interrupts or faults a worker mid-trial needs the trial to be running
with a checkpoint when it strikes. Racing a trial of a few seconds fails when the machine is
busy; held here, after its first epoch's checkpoint, the trial waits for the test instead.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from vae_tune.models.mlp import MLPVAE, MLPConfig

GATE_ENV = "VAE_TUNE_TEST_GATE"


class HeldMLP(MLPVAE):
    config_class = MLPConfig
    validations = 0

    def train(self, mode: bool = True) -> HeldMLP:
        if not mode:  # `evaluate` switches to eval mode once per validation
            self.validations += 1
            gate = os.environ.get(GATE_ENV)
            if gate and self.validations >= 2 and not Path(gate).exists():
                Path(f"{gate}.held-{os.getpid()}").touch()  # done writing; idle till the gate
                while not Path(gate).exists():
                    time.sleep(0.05)
        return super().train(mode)
