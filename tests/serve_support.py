"""What the `charbot serve` tests share: the server's app in this process on a loopback port (`serving`), a
second character card with an avatar (`write_cards`), and waiting for an observable condition (`until`)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
from aiohttp.test_utils import TestClient, TestServer

from charbot.config import load_settings
from charbot.serve.app import ServeApp
from charbot.serve.server import serve_engine

# A tiny picture carried inside the card (its top-level `avatar`, TavernAI's field).
AVATAR_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32"><rect width="32" height="32" rx="16" fill="#6b8f4e"/>'
    '<circle cx="12" cy="13" r="3" fill="#fff"/><circle cx="20" cy="13" r="3" fill="#fff"/>'
    '<path d="M10 21 q6 5 12 0" stroke="#fff" stroke-width="2" fill="none"/></svg>'
)
AVATAR = "data:image/svg+xml;base64," + base64.b64encode(AVATAR_SVG.encode()).decode()


def write_cards(folder: Path) -> Path:
    """A persona_dir with a second character, Pip the ferry mechanic, who has an avatar."""
    folder.mkdir(parents=True, exist_ok=True)
    card = {
        "spec": "chara_card_v2", "spec_version": "2.0", "avatar": AVATAR,
        "data": {
            "name": "Pip Tolley", "description": "Pip keeps the island ferry running with wire, grease and luck.",
            "personality": "cheerful, chatty, hopeless with timetables", "scenario": "{{user}} waits on the ferry slip.",
            "first_mes": "Ferry's late again, {{user}}. Engine's sulking.", "tags": ["sample"],
        },
    }
    (folder / "pip.json").write_text(json.dumps(card), encoding="utf-8")
    return folder


async def until(condition: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    """Wait until `condition()` holds (checked every 10 ms); its value. Raises naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {timeout:g}s")
        await asyncio.sleep(0.01)
    return value


@dataclass
class Served:
    """The app, an aiohttp client for it, and `openai()`: the real OpenAI client pointed at it (closed on exit)."""

    api: ServeApp
    http: TestClient
    clients: list[openai.AsyncOpenAI] = field(default_factory=list)

    def openai(self, key: str = "unused") -> openai.AsyncOpenAI:
        # no retries: each test sees the server's first answer
        self.clients.append(openai.AsyncOpenAI(base_url=str(self.http.make_url("/v1")), api_key=key, max_retries=0))
        return self.clients[-1]


@contextlib.asynccontextmanager
async def serving(backend, *, api_key: str | None = None, warm: bool = True, **flags: Any) -> AsyncIterator[Served]:
    """The serve app over `backend` (settings from `flags`, as flat names) on a loopback port. The test server
    cancels a handler whose client went away, as `charbot serve` does."""
    settings = load_settings(**flags)
    api = ServeApp(serve_engine(settings, backend=backend), settings, api_key=api_key)
    if warm:
        await api.warm_up()
    try:
        async with TestClient(TestServer(api.app)) as http:
            served = Served(api, http)
            try:
                yield served
            finally:
                for client in served.clients:
                    await client.close()
    finally:
        await api.engine.store.close()
