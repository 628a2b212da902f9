"""Storage behind a URL: any SQLAlchemy URL Optuna's RDB storage takes; passwords masked."""

from __future__ import annotations

import optuna
import sqlalchemy.exc
from sqlalchemy.engine import make_url

from tuner.errors import UserError


def mask_url(url: str) -> str:
    """The URL as safe to print: the password (if any) replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return "<unparseable storage URL>"


def engine_kwargs(url: str) -> dict:
    if make_url(url).get_backend_name() == "sqlite":
        # wait for a writer instead of failing with "database is locked"
        return {"connect_args": {"timeout": 60}}
    return {"pool_pre_ping": True}


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """Open (creating tables if needed) the study database at `url`."""
    try:
        make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise UserError(f"not a database URL: {mask_url(url)}", "storage") from None
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs(url))
    except (sqlalchemy.exc.NoSuchModuleError, ModuleNotFoundError) as err:
        hint = " (for PostgreSQL: pip install 'vae-tune[postgres]')" if "postgres" in url else ""
        raise UserError(f"no driver for {mask_url(url)}: {err}{hint}", "storage") from None
    except sqlalchemy.exc.OperationalError as err:
        reason = str(err.orig).splitlines()[0] if err.orig else str(err)
        raise ConnectionError(f"cannot open storage {mask_url(url)}: {reason}") from None
