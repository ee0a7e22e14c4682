"""All-or-nothing output files: everything is written under temporary names and renamed only at the end."""

from __future__ import annotations

import os
from pathlib import Path


class OutputSet:
    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self._created_dir = False
        self._temps: dict[str, Path] = {}
        self._scratch: list[Path] = []

    def __enter__(self) -> OutputSet:
        if self.out_dir.exists() and not self.out_dir.is_dir():
            from charbot.prepare.errors import ScriptError

            raise ScriptError(str(self.out_dir), "exists and is not a directory", "pass another --out directory")
        if not self.out_dir.exists():
            self.out_dir.mkdir(parents=True)
            self._created_dir = True
        return self

    def temp(self, name: str) -> Path:
        path = self.out_dir / f".{name}.{os.getpid()}.tmp"
        self._temps[name] = path
        return path

    def scratch(self, name: str) -> Path:
        """A working file removed at the end, success or not; never part of the output."""
        path = self.out_dir / f".{name}.{os.getpid()}.scratch"
        self._scratch.append(path)
        return path

    def final(self, name: str) -> Path:
        return self.out_dir / name

    @property
    def names(self) -> list[str]:
        """The outputs asked for so far, in the order they were asked for."""
        return list(self._temps)

    def commit(self) -> dict[str, Path]:
        done = {}
        for name, tmp in self._temps.items():
            tmp.replace(self.out_dir / name)
            done[name] = self.out_dir / name
        self._temps.clear()
        return done

    def __exit__(self, exc_type, exc, tb) -> None:
        for path in self._scratch:
            path.unlink(missing_ok=True)
        if exc_type is None:
            return
        for tmp in self._temps.values():
            tmp.unlink(missing_ok=True)
        if self._created_dir:
            try:
                self.out_dir.rmdir()  # only if we made it and it is still empty
            except OSError:
                pass
