"""`charbot discord` and `charbot serve` as a user runs them: the real CLI in a subprocess.

    async with DiscordCli("--max-new-tokens", "12", env=discord_env(fake, tmp_path, TOKEN), cwd=tmp_path) as bot:
        health = await bot.wait_ready()       # /healthz 200: model warm and gateway READY
        ...
    assert bot.returncode == 0, bot.stderr    # leaving the block sends SIGTERM and waits

    async with ServeCli(env=user_env(tmp_path), cwd=tmp_path) as server:
        await server.wait_ready()             # /healthz 200: model warm
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="-")

Each listens on a port the OS picks (--health-port 0, --port 0) and announces it on stderr; both output
streams are read from the start, so the pipes never fill and a failure can show what the process said.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from loopback import Loopback

HEALTH_LINE = re.compile(r"health page on http://[\d.]+:(\d+)/")
SERVE_LINE = re.compile(r"listening on http://[\d.]+:(\d+)/")
START_TIMEOUT = 90.0  # a fresh process loads and warms the model first; the CPU is shared
READY_TIMEOUT = 120.0


def user_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a user: none of the caller's CHARBOT_* settings, the memory database and data
    directory under `home`, and `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARBOT_")}
    env.update(CHARBOT_DB_PATH=str(home / "memory.db"), XDG_DATA_HOME=str(home / "xdg"), **extra)
    return env


def discord_env(fake, home: Path, token: str, **extra: str) -> dict[str, str]:
    """The environment of a user whose bot talks to `fake`."""
    return user_env(
        home, DISCORD_TOKEN=token, CHARBOT_DISCORD_API_URL=fake.api_url, CHARBOT_DISCORD_GATEWAY_URL=fake.gateway_url,
        CHARBOT_HEALTH_HOST="127.0.0.1", CHARBOT_DISCORD_COOLDOWN_SECONDS="0", **extra,
    )


class BotProcessError(AssertionError):
    """The process did not get where it was expected to; the message ends with its stderr so far."""


class CliProcess:
    """A `charbot <command>` subprocess whose HTTP port is announced on stderr by a line `announce` matches."""

    name = "charbot"
    announce: re.Pattern = HEALTH_LINE

    def __init__(self, *args: str, env: dict[str, str], cwd: Path, start_timeout: float = START_TIMEOUT):
        self.command = [sys.executable, "-m", "charbot", *self.name.split()[1:], *args]
        self.env, self.cwd, self.start_timeout = env, cwd, start_timeout
        self.proc: asyncio.subprocess.Process | None = None
        self.port: int | None = None
        self.started_at = self.health_page_at = 0.0  # time.perf_counter() at spawn and when the port was announced
        self._out: list[bytes] = []
        self._err: list[bytes] = []
        self._readers: list[asyncio.Task] = []
        self._announced: asyncio.Future[int] | None = None

    # --- output ----------------------------------------------------------------------------------
    @property
    def stdout(self) -> str:
        return b"".join(self._out).decode(errors="replace")

    @property
    def stderr(self) -> str:
        return b"".join(self._err).decode(errors="replace")

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    def _failure(self, what: str) -> BotProcessError:
        return BotProcessError(f"{self.name} {what}; its stderr so far:\n{self.stderr[-3000:]}")

    async def _read(self, stream: asyncio.StreamReader, sink: list[bytes], announces: bool) -> None:
        while chunk := await stream.read(65536):
            sink.append(chunk)
            if announces and not self._announced.done() and (m := self.announce.search(self.stderr)):
                self.health_page_at = time.perf_counter()
                self._announced.set_result(int(m.group(1)))
        if announces and not self._announced.done():
            self._announced.set_exception(self._failure("ended its output before announcing its port"))

    # --- lifecycle -------------------------------------------------------------------------------
    async def _spawn(self) -> None:
        self._announced = asyncio.get_running_loop().create_future()
        self.started_at = time.perf_counter()
        self.proc = await asyncio.create_subprocess_exec(
            *self.command, env=self.env, cwd=self.cwd,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        self._readers = [
            asyncio.create_task(self._read(self.proc.stdout, self._out, announces=False)),
            asyncio.create_task(self._read(self.proc.stderr, self._err, announces=True)),
        ]

    async def run(self, timeout: float = READY_TIMEOUT) -> int:
        """Run to the end (for runs that are meant to stop by themselves); the exit status."""
        await self._spawn()
        self._announced.cancel()  # not waited for
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except asyncio.TimeoutError:
            await self.stop(signal.SIGKILL)
            raise self._failure(f"still running after {timeout:g}s") from None
        await asyncio.gather(*self._readers, return_exceptions=True)
        return self.proc.returncode

    async def start(self) -> CliProcess:
        """Spawn the process and return once its health page has announced its port."""
        await self._spawn()
        try:
            self.port = await asyncio.wait_for(asyncio.shield(self._announced), self.start_timeout)
        except asyncio.TimeoutError:
            self._announced.cancel()
            await self.stop(signal.SIGKILL)
            raise self._failure(f"did not announce its port within {self.start_timeout:g}s") from None
        except BotProcessError:
            await self.stop(signal.SIGKILL)
            raise
        return self

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send `sig` (unless it has exited already), wait for the exit and the last output; the exit status."""
        assert self.proc is not None, "not started"
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except asyncio.TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise self._failure(f"did not exit within {timeout:g}s of signal {sig}") from None
        finally:
            await asyncio.gather(*self._readers, return_exceptions=True)
        return self.proc.returncode

    async def __aenter__(self) -> CliProcess:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        if self.proc is not None and self.proc.returncode is None:
            await self.stop()

    # --- the health page -------------------------------------------------------------------------
    async def health(self, http: aiohttp.ClientSession | None = None) -> tuple[int, dict[str, Any]]:
        """One GET of /healthz: its status and JSON body."""
        if http is None:
            async with aiohttp.ClientSession() as http:
                return await self.health(http)
        async with http.get(f"http://127.0.0.1:{self.port}/healthz") as response:
            return response.status, await response.json()

    async def wait_health(self, until: Callable[[int, dict[str, Any]], bool], what: str, timeout: float = READY_TIMEOUT,
                          poll: float = 0.05) -> dict[str, Any]:
        """Ask /healthz until `until(status, body)` holds; its body then. Raises, with the bot's stderr, when the
        process exits or `timeout` passes first."""
        deadline = time.monotonic() + timeout
        last: tuple[int, dict] | None = None
        async with aiohttp.ClientSession() as http:
            while True:
                if self.returncode is not None:
                    await asyncio.gather(*self._readers, return_exceptions=True)
                    raise self._failure(f"exited with {self.returncode} before {what}")
                try:
                    last = await self.health(http)
                except aiohttp.ClientConnectionError:
                    pass  # the process may be on its way out; the next round says so
                else:
                    if until(*last):
                        return last[1]
                if time.monotonic() > deadline:
                    raise self._failure(f"not {what} within {timeout:g}s (last /healthz: {last})")
                await asyncio.sleep(poll)

    async def wait_ready(self, timeout: float = READY_TIMEOUT, poll: float = 0.05) -> dict[str, Any]:
        """Until /healthz says 200: the model loaded and warm (and, for the bot, the gateway connected)."""
        return await self.wait_health(lambda status, body: status == 200, "ready", timeout, poll)


class DiscordCli(CliProcess):
    name = "charbot discord"
    announce = HEALTH_LINE

    def __init__(self, *args: str, **kwargs: Any):
        super().__init__("--health-port", "0", *args, **kwargs)


class ServeCli(CliProcess, Loopback):
    """`root` is the server's URL, `base_url` what an OpenAI client takes (its /v1)."""

    name = "charbot serve"
    announce = SERVE_LINE

    def __init__(self, *args: str, **kwargs: Any):
        super().__init__("--port", "0", *args, **kwargs)
