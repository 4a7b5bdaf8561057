"""Error kinds of fakebank, each with the exit code the CLI turns it into.

Every module raises these (never ``sys.exit``); ``cli.main`` is the one place that maps them to exit codes.
Messages say what went wrong and what to do next.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2


class FakebankError(Exception):
    """Base of every error fakebank raises on purpose."""

    exit_code = EXIT_USAGE


class UsageError(FakebankError):
    """The command was asked for something it cannot do (bad option, bad value)."""


class NotFoundError(UsageError):
    """An item id the bank does not hold (removed, or never added)."""


class CheckpointError(FakebankError):
    """A weights spec could not be resolved, read or loaded strictly."""


class BankError(FakebankError):
    """A bank folder is missing, locked, corrupt or built with another model."""


class ReadOnlyError(BankError):
    """A bank this process may read but not write (its folder or lock file is not writable)."""


class InputError(FakebankError):
    """One input file could not be used; the rest of the batch goes on."""

    exit_code = EXIT_SOME_FAILED


class TooLargeError(InputError):
    """An input over a size bound (bytes or decoded pixels): refused before it can exhaust memory."""


def http_status(e: FakebankError) -> int:
    """The HTTP status the service and its web UI answer an error with."""
    if isinstance(e, TooLargeError):
        return 413
    if isinstance(e, InputError):
        return 422
    if isinstance(e, NotFoundError):
        return 404
    if isinstance(e, ReadOnlyError):
        return 403
    return 400 if isinstance(e, UsageError) else 409
