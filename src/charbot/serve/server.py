"""Run `charbot serve` until SIGTERM or Ctrl-C: listen first (so /healthz can say 503 while the model loads),
then load and warm the model, then serve. The API key comes from the environment variable `serve_api_key_env`
names, checked before the model loads."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
from collections.abc import Callable

from charbot.config import Settings, required_secret
from charbot.engine import Engine
from charbot.factory import build_engine
from charbot.health import listen
from charbot.retention import RetentionTask
from charbot.serve.app import ServeApp

log = logging.getLogger(__name__)

SHUTDOWN_SECONDS = 10.0  # streams still running at shutdown get this long to finish


def api_key(settings: Settings) -> str | None:
    env = settings.serve.api_key_env
    if not env:
        return None
    return required_secret(
        env, f"serve_api_key_env names {env}, which is not set",
        f"export {env}=<a long random key> (clients send it as their API key), or set serve_api_key_env empty to ask for none",
    )


def serve_engine(settings: Settings, **parts) -> Engine:
    """The engine for the server: its scheduler bounded by the serve load settings, once, at assembly."""
    return build_engine(settings, max_inflight=settings.serve.max_inflight, max_queue=settings.serve.max_queue, **parts)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host).is_loopback
    return False


async def run(settings: Settings, key: str | None, *, on_listening: Callable[[str, int], None] | None = None) -> None:
    s = settings.serve
    engine = serve_engine(settings)
    api = ServeApp(engine, settings, api_key=key)
    m = settings.memory
    retention = RetentionTask(engine.store, retention_days=m.retention_days, max_messages=m.max_messages_per_conversation,
                              interval=m.prune_interval)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    runner, tasks = None, ()
    try:
        await engine.store.open()  # a wrong memory_url fails now, before the port is taken
        # handler_cancellation: a client that disconnects cancels its handler, and with it the generation
        runner, port = await listen(api.app, s.host, s.port, what="charbot serve", port_setting="serve_port",
                                    handler_cancellation=True, shutdown_timeout=SHUTDOWN_SECONDS)
        if key is None and not _is_loopback(s.host):
            log.warning("serving on %s without an API key: anyone who can reach port %d can use it (set serve_api_key_env)", s.host, port)
        if on_listening is not None:
            on_listening(s.host, port)
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        retention.start()
        warming, stopping = asyncio.create_task(api.warm_up()), asyncio.create_task(stop.wait())
        tasks = (warming, stopping)
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if not stopping.done():
            warming.result()  # a model that cannot load stops the server with its one-line error
            log.warning("model ready (%s); serving %s", engine.backend.describe(), ", ".join(api.characters.by_id))
            await stopping
    finally:
        for task in tasks:
            task.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        await retention.stop()
        if runner is not None:
            await runner.cleanup()
        await engine.backend.aclose()
        await engine.store.close()
