"""A fault-injecting HTTP proxy (aiohttp) for putting in front of a real inference server.

It forwards every request to `upstream` unchanged (streaming bodies included) unless a fault is queued:

    proxy.inject("status", status=429, headers={"Retry-After": "1"})    # rate limited
    proxy.inject("loading", estimated_time=1.5)                          # HF-style 503 while a model loads
    proxy.inject("slow", delay=10)                                       # answer only after `delay` seconds
    proxy.inject("truncated")                                            # 200 with the first half of the real JSON
    proxy.inject("drop")                                                 # close the connection, no response
    proxy.inject("drop_mid_stream", after=2)                             # pass `after` body chunks, then close
    proxy.inject(..., times=3)                                           # the next 3 requests get the fault

It runs its own event loop in a thread, so tests on any loop (or none: subprocesses) can use it.
`requests` records (method, path, fault kind or None, headers, body) for every request seen, when it came,
and how it ended: answered (or ended by its fault), or left by a client that stopped waiting.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import ClientSession, ClientTimeout, web

from loopback import HOST, Loopback, listen

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "host"}


class _ClientLeft(Exception):
    pass


@dataclass
class Fault:
    kind: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Seen:
    method: str
    path: str
    fault: str | None
    headers: dict[str, str]
    body: bytes = b""
    at: float = field(default_factory=time.monotonic)  # when it came in
    outcome: str | None = None  # "answered", or "client left" when the client hung up first; None while open
    lasted: float | None = None  # seconds from `at` to `outcome`

    def json(self) -> Any:
        import json

        return json.loads(self.body)


class FaultProxy(Loopback):
    def __init__(self, upstream: str, host: str = HOST):
        self.upstream = upstream.rstrip("/")
        self.host = host
        self.port = 0
        self.requests: list[Seen] = []
        self._faults: deque[Fault] = deque()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: ClientSession | None = None

    # --- control (any thread) ------------------------------------------------------------------------
    def inject(self, kind: str, *, times: int = 1, **params: Any) -> None:
        with self._lock:
            for _ in range(times):
                self._faults.append(Fault(kind, params))

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self.requests.clear()

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._faults)

    async def wait_ended(self, timeout: float = 10.0) -> list[Seen]:
        """Until every request seen so far has an outcome; the requests."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                seen = list(self.requests)
            if all(r.outcome is not None for r in seen):
                return seen
            if time.monotonic() > deadline:
                raise AssertionError(f"requests still open after {timeout:g}s: {[(r.path, r.fault) for r in seen if r.outcome is None]}")
            await asyncio.sleep(0.02)

    def _next_fault(self) -> Fault | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    # --- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self._start())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="faultproxy", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fault proxy did not start")
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop.close()
        self._loop = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    async def _start(self) -> None:
        self._session = ClientSession(timeout=ClientTimeout(total=None))
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a "slow" fault stops when the client gives up, so shutdown never waits on it.
        self._runner, self.port = await listen(app, self.host, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    # --- the proxy -----------------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        fault = self._next_fault()
        body = await request.read()
        seen = Seen(request.method, request.path, fault.kind if fault else None, dict(request.headers), body)
        with self._lock:
            self.requests.append(seen)
        outcome = "client left"
        try:
            response = await self._serve(request, body, fault)
            outcome = "answered"
            return response
        except _ClientLeft:
            return web.Response()  # nobody to send it to
        finally:  # also when aiohttp cancels the handler because the client hung up
            seen.lasted = time.monotonic() - seen.at
            seen.outcome = outcome

    async def _serve(self, request: web.Request, body: bytes, fault: Fault | None) -> web.StreamResponse:
        if fault is None:
            return await self._forward(request, body)
        p = fault.params
        if fault.kind == "status":
            payload = p.get("body", {"error": p.get("message", f"injected {p.get('status', 500)}")})
            return web.json_response(payload, status=p.get("status", 500), headers=p.get("headers"))
        if fault.kind == "loading":
            payload = {"error": "Model is currently loading", "estimated_time": p.get("estimated_time", 1.0)}
            return web.json_response(payload, status=503)
        if fault.kind == "slow":
            await asyncio.sleep(p.get("delay", 30.0))
            return await self._forward(request, body)
        if fault.kind == "truncated":
            upstream = await self._fetch(request, body)
            cut = upstream[: max(1, len(upstream) // 2)]
            return web.Response(body=cut, status=200, content_type="application/json")
        if fault.kind == "malformed":
            return web.Response(body=p.get("body", b'{"object": "chat.completion", "choices": []}'), status=200, content_type="application/json")
        if fault.kind == "drop":
            request.transport.abort()  # type: ignore[union-attr]
            return web.Response()  # never sent: the connection is gone
        if fault.kind == "drop_mid_stream":
            return await self._forward(request, body, drop_after=p.get("after", 2))
        raise ValueError(f"unknown fault {fault.kind!r}")

    def _upstream_request(self, request: web.Request, body: bytes):
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        assert self._session is not None
        return self._session.request(request.method, self.upstream + request.path_qs, data=body, headers=headers)

    async def _fetch(self, request: web.Request, body: bytes) -> bytes:
        async with self._upstream_request(request, body) as upstream:
            return await upstream.read()

    async def _forward(self, request: web.Request, body: bytes, drop_after: int | None = None) -> web.StreamResponse:
        try:
            return await self._relay(request, body, drop_after)
        except ConnectionResetError:  # the client gave up (e.g. its timeout)
            raise _ClientLeft from None

    async def _relay(self, request: web.Request, body: bytes, drop_after: int | None) -> web.StreamResponse:
        async with self._upstream_request(request, body) as upstream:
            response = web.StreamResponse(status=upstream.status, headers={k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS})
            await response.prepare(request)
            sent = 0
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
                sent += 1
                if drop_after is not None and sent >= drop_after:
                    request.transport.abort()  # type: ignore[union-attr]
                    return response
            await response.write_eof()
            return response
