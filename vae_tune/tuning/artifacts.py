"""Where trial files (pictures, checkpoints) live: an Optuna file-system artifact store.

Default: beside a SQLite file (`study.db` -> `study-artifacts/`), else `./vae-tune-artifacts`;
`artifact_dir` in the spec, `worker --artifact-dir` or `$VAE_TUNE_ARTIFACTS` overrides it. The
dashboard is pointed at the same folder so it shows what trials stored.
"""

from __future__ import annotations

import os
from pathlib import Path

from optuna.artifacts import FileSystemArtifactStore

from vae_tune.tuning.storage import sqlite_file


def artifact_dir(storage_url: str, override: str | Path | None = None) -> Path:
    chosen = override or os.environ.get("VAE_TUNE_ARTIFACTS")
    if chosen:
        return Path(chosen)
    db = sqlite_file(storage_url)
    return db.with_name(f"{db.stem}-artifacts") if db is not None else Path("vae-tune-artifacts")


def open_artifact_store(
    storage_url: str, override: str | Path | None = None, *, create: bool = True
) -> FileSystemArtifactStore:
    """The study's artifact store; readers (the dashboard) pass `create=False` so that looking
    at a study never makes folders."""
    path = artifact_dir(storage_url, override)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(path))
