"""The one error type callspan raises for user-facing problems.

The CLI's ``main`` maps it to a one-line message and an exit code; nothing else prints it.
"""

from __future__ import annotations


class CallspanError(Exception):
    """A problem the user can fix: bad input file, bad option, bad configuration.

    ``str(error)`` is the complete one-line message (it names the file and what is wrong).
    """

    exit_code: int = 2

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
