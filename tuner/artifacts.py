"""Where trial files (pictures, checkpoints) live: an Optuna file-system artifact store.

Default: beside a SQLite file (`study.db` -> `study-artifacts/`), else `./vae-tune-artifacts`;
`artifact_dir` in the spec, `--artifact-dir` or `$VAE_TUNE_ARTIFACTS` overrides it. The
dashboard is pointed at the same folder so it shows what trials stored.
"""

from __future__ import annotations

import os
from pathlib import Path

from optuna.artifacts import FileSystemArtifactStore
from sqlalchemy.engine import make_url


def artifact_dir(storage_url: str, override: str | Path | None = None) -> Path:
    chosen = override or os.environ.get("VAE_TUNE_ARTIFACTS")
    if chosen:
        return Path(chosen)
    url = make_url(storage_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        db = Path(url.database)
        return db.with_name(f"{db.stem}-artifacts")
    return Path("vae-tune-artifacts")


def open_artifact_store(
    storage_url: str, override: str | Path | None = None
) -> FileSystemArtifactStore:
    path = artifact_dir(storage_url, override)
    path.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(path))
