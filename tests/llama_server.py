"""A real OpenAI-compatible server for tests: llama-cpp-python's `llama_cpp.server` serving the embedded GGUF
on 127.0.0.1, as a subprocess. Used through the session-scoped `llama_server` fixture in conftest.py.

Needs llama-cpp-python's server extra (fastapi, uvicorn, sse-starlette, starlette-context); without it the
fixture skips with the pip command to run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from loopback import HOST, Loopback, free_port

SERVER_EXTRA = ("fastapi", "uvicorn", "sse_starlette", "starlette_context")
START_TIMEOUT = 120.0


def missing_server_deps() -> list[str]:
    return [name for name in ("llama_cpp", *SERVER_EXTRA) if importlib.util.find_spec(name) is None]


@dataclass
class LlamaServer(Loopback):
    process: subprocess.Popen
    port: int
    log_path: Path

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _wait_until_up(server: LlamaServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited with {server.process.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(f"{server.base_url}/models", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"llama_cpp.server did not answer within {timeout:.0f}s:\n{server.log_tail()}")


def spawn(port: int | None = None, model_path: Path | None = None, *, n_ctx: int = 2048, threads: int = 1) -> LlamaServer:
    """Start the server process without waiting for it; its output goes to a temporary log file.

    One thread by default: llama.cpp's worker threads spin on a barrier, and on a shared, busy CPU two of
    them made a 20-token reply 3-10x slower than one.
    """
    if model_path is None:
        from charbot.models import embedded_model_path

        model_path = embedded_model_path()
    port = port or free_port()
    cmd = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model_path), "--host", HOST, "--port", str(port),
        "--n_ctx", str(n_ctx), "--n_threads", str(threads), "--n_threads_batch", str(threads),
    ]
    with tempfile.NamedTemporaryFile(prefix="llama_server_", suffix=".log", delete=False) as log_file:
        process = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return LlamaServer(process, port, Path(log_file.name))


@contextlib.contextmanager
def running_server(model_path: Path | None = None, *, n_ctx: int = 2048, threads: int = 1) -> Iterator[LlamaServer]:
    """Start the server, wait until /v1/models answers, stop it on exit (terminate, then kill)."""
    server = spawn(model_path=model_path, n_ctx=n_ctx, threads=threads)
    try:
        _wait_until_up(server, START_TIMEOUT)
        yield server
    finally:
        server.process.terminate()
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
        server.log_path.unlink(missing_ok=True)
