"""Shared fixtures. `ScriptedBackend` is the mock model: it answers from a script and records prompts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from charbot.backends.base import Backend, Completion, Prompt
from charbot.backends.remote import RemoteBackend
from charbot.errors import BackendError
from charbot.factory import sample_card_path
from charbot.generation import GenerationSettings
from charbot.memory_sqlite import SqliteStore
from charbot.persona import load_card


class ScriptedBackend(Backend):
    """Replies come from `replies` in order (the last repeats), or from `respond(prompt)` when given.

    Every prompt is kept in `prompts`, so tests can assert on exactly what the model was shown.
    `fail_next` makes the next N calls raise BackendError; `delay` makes generation take that long; a `release`
    event makes every generation wait until it is set. `parallel` is how many generations it says it serves
    at once; `peak` is the most that overlapped.
    """

    name = "scripted"

    def __init__(self, replies: list[str] | None = None, respond: Callable[[Prompt], str] | None = None, *, context_window: int = 2048,
                 delay: float = 0.0, parallel: int = 1):
        self.replies = list(replies or ["Aye, sprat."])
        self.respond = respond
        self.context_window = context_window
        self.model_id = "scripted"
        self.eos_token = "<eos>"
        self.delay = delay
        self.prompts: list[Prompt] = []
        self.settings: list[GenerationSettings] = []
        self.fail_next = 0
        self.calls = 0
        self.release: asyncio.Event | None = None
        self.parallel = parallel
        self.running = 0
        self.peak = 0

    @classmethod
    def from_settings(cls, settings) -> ScriptedBackend:
        return cls(context_window=settings.context_window)

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def _next(self, prompt: Prompt) -> str:
        self.calls += 1
        if self.fail_next:
            self.fail_next -= 1
            raise BackendError("scripted failure")
        self.prompts.append(prompt)
        if self.respond is not None:
            return self.respond(prompt)
        return self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]

    async def complete(self, prompt: Prompt, settings: GenerationSettings) -> Completion:
        self.settings.append(settings)
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            if self.release is not None:
                await self.release.wait()
            if self.delay:
                await asyncio.sleep(self.delay)
            text = self._next(prompt)
        finally:
            self.running -= 1
        return Completion(text, len(text.split()))

    async def stream(self, prompt: Prompt, settings: GenerationSettings) -> AsyncIterator[str]:
        self.settings.append(settings)
        if self.release is not None:
            await self.release.wait()
        text = self._next(prompt)
        for word in text.split(" "):
            if self.delay:
                await asyncio.sleep(self.delay / 10)
            yield word + " "


class RemoteWithHistory(RemoteBackend):
    """The remote backend keeping every status it takes, with `ready` at that moment: what a health page
    polling it could have seen, without the test having to poll in time."""

    def __setattr__(self, name: str, value) -> None:
        super().__setattr__(name, value)
        if name == "status":
            self.__dict__.setdefault("statuses", []).append((self.__dict__.get("ready", False), value))

    def waits(self) -> list[str]:
        """The statuses that announced a wait before a retry."""
        return [status for _, status in self.statuses if status.startswith("waiting")]


@pytest.fixture
def sample_card():
    return load_card(sample_card_path())


@pytest.fixture
async def store(tmp_path: Path):
    """The default store: SQLite in a temporary file (`store.sync` reads it without awaiting)."""
    s = SqliteStore(tmp_path / "memory.db")
    yield s
    await s.close()


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server (tests/pg_server.py) for the whole session: initdb in a temporary directory,
    a free loopback port. Skipped, saying why, only where no server binaries can be had."""
    from pg_server import PostgresServer, why_unavailable

    reason = why_unavailable()
    if reason:
        pytest.skip(reason)
    server = PostgresServer()
    server.start()
    yield server
    server.remove()


_databases = iter(range(1, 1_000_000))


@pytest.fixture
def pg_url(postgres) -> str:
    """The URL of a fresh, empty database on the session's server, owned by a password-protected role."""
    return postgres.new_database(f"t{next(_databases)}")


@pytest.fixture(params=["sqlite", "postgres"])
def memory_url(request, tmp_path: Path) -> str:
    """Each kind of memory_url in turn: a SQLite file, and an empty PostgreSQL database on the session's server."""
    return str(tmp_path / "memory.db") if request.param == "sqlite" else request.getfixturevalue("pg_url")


@pytest.fixture(params=["sqlite", "postgres"])
async def any_store(request, tmp_path: Path):
    """Each store implementation in turn, opened on an empty database."""
    from charbot.memory import create_store

    url = str(tmp_path / "memory.db") if request.param == "sqlite" else request.getfixturevalue("pg_url")
    s = create_store(url)
    await s.open()
    yield s
    await s.close()


@pytest.fixture
def scripted() -> ScriptedBackend:
    return ScriptedBackend()


@pytest.fixture
def isolated_env(tmp_path, monkeypatch):
    """No user config leaks into tests: settings come only from what the test sets."""
    monkeypatch.chdir(tmp_path)
    for key in list(__import__("os").environ):
        if key.startswith("CHARBOT_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("CHARBOT_DB_PATH", str(tmp_path / "memory.db"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    return tmp_path


@pytest.fixture(scope="session")
def llama_server():
    """A real llama.cpp OpenAI-compatible server on 127.0.0.1 serving the embedded model (tests/llama_server.py)."""
    from llama_server import missing_server_deps, running_server

    missing = missing_server_deps()
    if missing:
        pytest.skip(f"llama_cpp.server needs {', '.join(missing)}: pip install fastapi uvicorn sse-starlette 'starlette-context<0.4'")
    with running_server() as server:
        yield server


@pytest.fixture
async def fake():
    """The loopback fake Discord (REST + gateway) of tests/fakediscord, started for one test."""
    from fakediscord import FakeDiscord

    async with FakeDiscord() as server:
        yield server
