"""What the tests' own servers (the fake Discord, the fault proxy, the llama.cpp server) share: an address on
127.0.0.1 and, for the in-process ones, an aiohttp app listening on a port the OS picks."""

from __future__ import annotations

import socket

from aiohttp import web

HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Loopback:
    """`host` and `port` of a server the tests started; `root` is its base URL, `base_url` its OpenAI-style /v1."""

    host: str = HOST
    port: int  # 0 until it listens

    @property
    def root(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root}/v1"


async def listen(app: web.Application, host: str = HOST, **runner_options) -> tuple[web.AppRunner, int]:
    """Serve `app` on a free port of `host`; returns the runner (its `cleanup()` stops it) and the port."""
    runner = web.AppRunner(app, handle_signals=False, **runner_options)
    await runner.setup()
    await web.TCPSite(runner, host, 0).start()
    return runner, runner.addresses[0][1]
