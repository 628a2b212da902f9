"""A trial's fixed cost: where the quickstart's trial time goes besides training.

Runs `vae-tune run` on a spec (the shipped quickstart by default) in a scratch folder, then
reads each finished trial's time split (the `seconds` user attribute: training steps,
validation, IW-NLL, pictures, the rest) and prints medians per trial and shares of the total.
The target: the median of wall - training - validation under 0.2 s per trial.

    python bench/overhead.py                       # studies/quickstart.yaml, its defaults
    python bench/overhead.py my-spec.yaml --workers 1
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

from vae_tune.tuning.objective import TIME_PARTS
from vae_tune.tuning.record import read
from vae_tune.tuning.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).with_name("vae-tune"))
PARTS = tuple(TIME_PARTS)
TARGET_S = 0.2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    quickstart = ROOT / "vae_tune" / "studies" / "quickstart.yaml"
    ap.add_argument("spec", nargs="?", default=str(quickstart))
    ap.add_argument("--workers", default="auto")
    args = ap.parse_args()
    spec = load_spec(Path(args.spec))
    with tempfile.TemporaryDirectory() as tmp:
        spec.storage = f"sqlite:///{tmp}/o.db"
        (Path(tmp) / "spec.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json")))
        cmd = [CLI, "run", "spec.yaml", "--workers", args.workers]
        subprocess.run(cmd, check=True, cwd=tmp, stdout=subprocess.DEVNULL)
        study = optuna.load_study(study_name=spec.study_name, storage=spec.storage)
        states = (TrialState.COMPLETE, TrialState.PRUNED)
        trials = [t for t in study.get_trials(states=states) if read(t).seconds is not None]
    rows = {
        "complete": [read(t).seconds for t in trials if t.state == TrialState.COMPLETE],
        "pruned": [read(t).seconds for t in trials if t.state == TrialState.PRUNED],
        "all": [read(t).seconds for t in trials],
    }
    print(f"{spec.study_name}: {len(trials)} trials, --workers {args.workers}")
    print(f"{'median s per trial':22}" + "".join(f"{p:>11}" for p in ("trial", *PARTS)))
    for name, split in rows.items():
        if split:
            print(
                f"{name + f' ({len(split)})':22}"
                + "".join(
                    f"{statistics.median(s[p] for s in split):11.3f}" for p in ("trial", *PARTS)
                )
            )
    total = sum(s["trial"] for s in rows["all"])
    print(
        f"{'share of trial time':22}{'':11}"
        + "".join(f"{sum(s[p] for s in rows['all']) / total:11.1%}" for p in PARTS)
    )
    fixed = statistics.median(s["trial"] - s["train"] - s["validation"] for s in rows["all"])
    rest = statistics.median(s["other"] for s in rows["all"])
    print(
        f"wall - training - validation per trial (median): {fixed:.3f} s (target < {TARGET_S} s); "
        f"of it, IW-NLL and pictures aside: {rest:.3f} s"
    )


if __name__ == "__main__":
    main()
