"""Exceptions that carry what a user needs: one line of what went wrong and a hint of what to do."""

from __future__ import annotations


class QwenbenchError(Exception):
    """Base of every error the CLI turns into one clear line plus a hint."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(QwenbenchError):
    """A bad input from the user: unknown name, nonsense number, missing file."""

    exit_code = 2


class ConfigError(UsageError):
    """A config or catalog file that does not validate; the message names the field."""


class InvalidModelFileError(UsageError):
    """A file that is not a GGUF llama.cpp could load (rejected before llama.cpp sees it)."""


class ResultsFileError(QwenbenchError):
    """A results CSV that cannot be appended to safely (other schema, unreadable)."""


class RunFailedError(QwenbenchError):
    """The benchmark child failed: crash, abort, OOM kill, timeout."""


class Interrupted(QwenbenchError):
    """Work the user stopped (Ctrl-C) that can be taken up again; the hint says how."""

    exit_code = 130
