"""Errors a user can fix by changing their input; the CLI turns them into exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input named by the field (or file) that is wrong; never a bug in vae-tune."""

    def __init__(self, message: str, field: str | None = None):
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class SpecError(UserError):
    """A study spec or run config that does not validate."""


class DataError(UserError):
    """A dataset that cannot be found, downloaded or read as images."""
