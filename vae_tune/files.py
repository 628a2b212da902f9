"""Writing the user's output files: checked before the work, written whole or not at all."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from vae_tune.errors import ServiceError, UserError


def check_writable(path: Path, field: str = "output") -> Path:
    """Fail now (not after an hour of training) if `path` cannot be written: a folder, a
    missing or read-only parent folder."""
    if path.is_dir():
        raise UserError(f"{path} is a directory; give a file name", field)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"no such directory: {parent}", field)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to directory {parent} (permission denied)", field)
    return path


def write_atomic(path: Path, data: str | bytes, field: str = "output") -> None:
    """Write `data` to a temporary file beside `path`, then rename it over `path`: readers
    never see half a file, and a failure leaves nothing behind."""
    check_writable(path, field)
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:  # the usual permissions (umask), unlike mkstemp's 0600
            f.write(raw)
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise ServiceError(f"cannot write {path}: {err.strerror or err}") from None


def check_new_dir(path: Path, force: bool = False, field: str = "output") -> Path:
    """Fail now (before the work) if the folder `path` cannot be made: a file there, a folder
    with something in it (unless `force`), or no writable folder to make it in."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} is a file; give a folder name", field)
    if path.is_dir() and any(path.iterdir()) and not force:
        raise UserError(f"{path} exists and is not empty; pass --force to replace it", field)
    ancestor = path.absolute().parent
    while not ancestor.exists():  # missing parents are made when the folder is written
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"{ancestor} is not a directory", field)
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to directory {ancestor} (permission denied)", field)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but is someone else's
        return True
    return True


def _remove_stale(path: Path) -> None:
    """Temporary folders for `path` left by writers that were killed (their process is gone)."""
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def write_dir_atomic(path: Path, force: bool = False, field: str = "output") -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; when the block ends it is renamed to `path`
    (replacing an empty folder, or with `force` a full one). If the block fails the folder is
    removed; if the process is killed it stays hidden beside `path` (removed by the next write)
    and `path` is untouched: no reader ever sees a half-written folder there."""
    check_new_dir(path, force, field)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as err:
        raise ServiceError(f"cannot write {path}: {err.strerror or err}") from None
    try:
        yield tmp
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        if path.is_dir() and any(path.iterdir()):  # force: move it aside, swap, then delete
            os.replace(path, old)
        try:
            os.replace(tmp, path)  # atomic; replaces an empty folder
        except OSError:
            if old.exists():
                os.replace(old, path)  # the replaced run comes back
            raise
        shutil.rmtree(old, ignore_errors=True)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ServiceError(f"cannot write {path}: {err.strerror or err}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
