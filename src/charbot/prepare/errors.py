"""The error `charbot prepare` raises: what is wrong, in which file (and line), and how to fix it."""

from __future__ import annotations

from charbot.errors import CharbotError


class ScriptError(CharbotError):
    """A script file (or a prepare option) the user has to fix. Always names the file, and the line when known."""

    exit_code = 2

    def __init__(self, where: str, what: str, fix: str | None = None):
        self.where = where
        super().__init__(f"{where}: {what}", fix)
