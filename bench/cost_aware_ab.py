"""The cost-aware choice of architecture on and off, same seconds budget, same spec.

The quickstart spec (digits; mlp, conv and rnn, whose epochs cost about 1x, 4x and 4x an MLP's
here) with `budget.seconds` and no trial count, once with `sampler.cost_aware: true` (the
default for a searched architecture) and once with false, per seed, interleaved. Prints per
run the best validation ELBO, trials and training seconds per architecture, then medians.

    python bench/cost_aware_ab.py [--seconds 30] [--seeds 0,1,2] [--spec quickstart]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections import Counter, defaultdict

import optuna

import vae_tune
from vae_tune.tuning import record
from vae_tune.tuning.spec import load_spec


def run(spec: str, seed: int, seconds: float, cost_aware: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        storage = f"sqlite:///{tmp}/ab.db"
        data = load_spec(spec).model_dump(mode="json")
        data.update(storage=storage, seed=seed, budget={"seconds": seconds})
        data["sampler"]["cost_aware"] = cost_aware
        data["training"].update(pictures=False, iw_samples=0)
        study = vae_tune.tune(data, progress=False).study
        trials = [t for t in study.trials if "architecture" in t.params]
        count = Counter(t.params["architecture"] for t in trials)
        secs: dict[str, float] = defaultdict(float)
        for t in trials:
            secs[t.params["architecture"]] += record.read(t).train_seconds or 0.0
        return {"best": study.best_value, "count": count, "seconds": secs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--spec", default="quickstart")
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--seeds", default="0,1,2")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows: dict[bool, list[dict]] = {True: [], False: []}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for aware in (True, False):
            r = run(args.spec, seed, args.seconds, aware)
            rows[aware].append(r)
            total = sum(r["seconds"].values())
            shares = ", ".join(
                f"{a} {r['count'][a]} trials {100 * s / total:.0f}%"
                for a, s in sorted(r["seconds"].items())
            )
            print(
                f"seed {seed} cost_aware {str(aware):5}: best {r['best']:8.3f}; {shares} "
                "of training seconds",
                flush=True,
            )
    for aware in (True, False):
        best = statistics.median(r["best"] for r in rows[aware])
        trials = statistics.median(sum(r["count"].values()) for r in rows[aware])
        print(f"cost_aware {str(aware):5}: median best {best:8.3f}, median trials {trials:.0f}")


if __name__ == "__main__":
    main()
