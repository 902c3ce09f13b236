"""The one exception type a user's mistake turns into.

Its message is a sentence (or two) that says what went wrong and what to do; the CLI prints
it without a traceback and exits with ``exit_code``.
"""

from __future__ import annotations


class LauncherError(Exception):
    """A problem the user can fix; ``str(err)`` says how."""

    exit_code = 2

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
