"""A real OpenAI-compatible server for tests: llama-cpp-python's `llama_cpp.server` serving the embedded GGUF
on 127.0.0.1, as a subprocess. Used through the session-scoped `llama_server` fixture in conftest.py.

Needs llama-cpp-python's server extra (fastapi, uvicorn, sse-starlette, starlette-context); without it the
fixture skips with the pip command to run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SERVER_EXTRA = ("fastapi", "uvicorn", "sse_starlette", "starlette_context")
START_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def missing_server_deps() -> list[str]:
    return [name for name in ("llama_cpp", *SERVER_EXTRA) if importlib.util.find_spec(name) is None]


@dataclass
class LlamaServer:
    process: subprocess.Popen
    port: int
    log_path: Path

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root}/v1"

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


@contextlib.contextmanager
def running_server(model_path: Path | None = None, *, n_ctx: int = 2048, threads: int = 1) -> Iterator[LlamaServer]:
    """Start the server, wait until /v1/models answers, stop it on exit (terminate, then kill).

    One thread by default: llama.cpp's worker threads spin on a barrier, and on a shared, busy CPU two of
    them made a 20-token reply 3-10x slower than one.
    """
    if model_path is None:
        from charbot.models import embedded_model_path

        model_path = embedded_model_path()
    port = free_port()
    log_file = tempfile.NamedTemporaryFile(prefix="llama_server_", suffix=".log", delete=False)
    cmd = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model_path), "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", str(n_ctx), "--n_threads", str(threads), "--n_threads_batch", str(threads),
    ]
    process = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    server = LlamaServer(process, port, Path(log_file.name))
    try:
        _wait_until_up(server, START_TIMEOUT)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log_file.close()
        with contextlib.suppress(OSError):
            os.unlink(log_file.name)
