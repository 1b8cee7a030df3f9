"""Errors a user can cause and fix. The CLI turns each into one line and an exit code.

Everything else (a bug) keeps its traceback: hiding those would hide our mistakes.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input a user can fix: printed as one line, exit code 2, nothing written."""

    exit_code = 2


class ConfigError(UserError):
    """A config problem, located by file and dotted key path."""

    def __init__(self, source: str, key: str | None, message: str):
        self.source, self.key, self.message = source, key, message
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {message}")


class DataError(UserError):
    """A dataset that is missing, incomplete or corrupt; the message says how to fix it."""


class RunError(UserError):
    """An environment problem with a run directory (unwritable, incompatible checkpoint)."""
