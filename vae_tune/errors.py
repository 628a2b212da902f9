"""Errors the CLI turns into one line and an exit code instead of a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input named by the field (or file) that is wrong; never a bug in vae-tune (exit 2)."""

    def __init__(self, message: str, field: str | None = None):
        self.field = field
        self.reason = message  # without the field, for errors that nest it elsewhere
        super().__init__(f"{field}: {message}" if field else message)


class SpecError(UserError):
    """A study spec or run config that does not validate."""


class DataError(UserError):
    """A dataset that cannot be found, downloaded or read as images."""


class ServiceError(Exception):
    """The machine or a service is in the way, not the input: a database that does not answer,
    a port in use, a full disk (exit 1)."""
