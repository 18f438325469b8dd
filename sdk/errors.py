"""semedge's exception types (torch-free: imported by semedge.runtime).

A `SemedgeError` is something the user can fix; `str(err)` is the whole one-line CLI message.
Bugs are never SemedgeErrors: the CLI reports them as internal errors (exit 3).
"""

from __future__ import annotations

__all__ = [
    "SemedgeError",
    "InputError",
    "ArtifactError",
    "BackendUnavailable",
    "AccuracyError",
    "UsageError",
]


class SemedgeError(Exception):
    """Root of every user-fixable error; the CLI prints `str(err)` and exits 1."""


class InputError(SemedgeError, ValueError):
    """Bad text, option, ratio or shape."""


class ArtifactError(SemedgeError):
    """A missing, corrupt, tampered or incompatible file or directory."""


class BackendUnavailable(SemedgeError, ImportError):
    """A package or execution provider is missing or does not work."""


class AccuracyError(SemedgeError):
    """A parity or quality budget was missed; `.report` holds the measurements."""

    def __init__(self, message: str, report: object | None = None) -> None:
        super().__init__(message)
        self.report = report


class UsageError(RuntimeError):
    """An API called in the wrong order (run() before load(), a Generator used twice): a bug in
    the calling code, not the user's input, so never a SemedgeError (the CLI exits 3)."""
