"""Errors that reach the user as one line: what went wrong, where, and how to fix it."""

from __future__ import annotations


class CharbotError(Exception):
    """An error the user can act on. `str()` is the whole one-line message."""

    exit_code = 1

    def __init__(self, what: str, fix: str | None = None):
        self.what = what
        self.fix = fix
        super().__init__(what)

    def __str__(self) -> str:
        text = self.what if not self.fix else f"{self.what} — {self.fix}"
        # One line, always: multi-line library messages are folded.
        return " ".join(text.split())


class ConfigError(CharbotError):
    exit_code = 2


class ModelError(CharbotError):
    pass


class PersonaError(CharbotError):
    pass


class BackendError(CharbotError):
    """A generation failed. `user_message` is safe to show to chat users."""

    user_message = "Sorry, I couldn't come up with a reply just now. Please try again."


class BackendUnavailable(BackendError):
    user_message = "My brain is offline for a moment. Please try again shortly."


class BusyError(CharbotError):
    user_message = "I'm busy with other conversations, try again in a moment."
