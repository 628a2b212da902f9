"""Export the best trial as a run config that `vae-tune train` reproduces."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import yaml

from tuner.errors import UserError
from tuner.files import write_atomic
from tuner.spec import RunConfig


def best_config(study: optuna.Study) -> dict[str, Any]:
    """The best trial's full training config, with where it came from under `source`."""
    try:
        best = study.best_trial
    except ValueError:
        raise UserError(
            f"study {study.study_name!r} has no complete trial yet; run more trials first",
            "study_name",
        ) from None
    if "config" not in best.user_attrs:
        raise UserError(
            f"trial {best.number} of study {study.study_name!r} has no stored config", "study_name"
        )
    config = RunConfig.model_validate(best.user_attrs["config"])
    config.source = {
        "study": study.study_name,
        "trial": best.number,
        "value": best.value,
        "params": best.params,
    }
    return config.model_dump(mode="json")


def write_config(config: dict[str, Any], path: Path) -> None:
    """Write as YAML or JSON by suffix, whole or not at all."""
    if path.suffix in (".yaml", ".yml"):
        text = yaml.safe_dump(config, sort_keys=False)
    elif path.suffix == ".json":
        text = json.dumps(config, indent=2) + "\n"
    else:
        raise UserError(f"unsupported suffix {path.suffix!r}: use .yaml, .yml or .json", "output")
    write_atomic(path, text)
