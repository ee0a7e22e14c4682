"""The peer in the serving benchmark: llama.cpp's own `llama-server`, the program a user would run instead of charbot.

Same GGUF, same box, same token ids, same number of generated tokens, measured in the same run as charbot.
The binary is built once from the llama.cpp that llama-cpp-python 0.3.36 vendors (scripts/build_llama_server.sh),
so both sides run the same kernels and only the serving loop differs.

How charbot's serving benchmark should call it (after charbot's own side has released its model and threads:
the two must not run at the same time, each wants every core):

    from llama_server_peer import LlamaServer   # benchmarks/ is on sys.path when run as a script
    async with LlamaServer(gguf, parallel=8, ctx_per_slot=2048, threads=threads) as peer:
        records = await peer.burst([tokens_1, ..., tokens_n], n_predict=64, seed=1234)
    # records[i].ttft_s / .total_s: per request, from the instant the burst was sent
    # aggregate tok/s = sum(r.tokens for r in records) / max(r.total_s for r in records)

Pass the very token ids charbot decodes (its rendered prompt, tokenized the same way), and make charbot generate
exactly n_predict tokens too (the peer is asked for ignore_eos): otherwise the two sides do different work.

    python benchmarks/llama_server_peer.py [--model GGUF] [--threads N] [--sizes 1,4,8] [--n-predict 32]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
LLAMA_VERSION = "0.3.36"  # llama-cpp-python's version, whose vendored llama.cpp the binary is built from
START_TIMEOUT = 180.0
STOP_TIMEOUT = 15.0


class PeerError(RuntimeError):
    pass


def cached_binary() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    wheelhouse = Path(os.environ.get("CHARBOT_WHEELHOUSE") or Path(cache) / "charbot" / "wheelhouse")
    return wheelhouse / f"llama-server-{LLAMA_VERSION}" / "bin" / "llama-server"


def server_binary() -> Path:
    """The cached llama-server, built first if missing (minutes, once per machine)."""
    binary = cached_binary()
    if os.access(binary, os.X_OK):
        return binary
    # The script downloads the sdist with pip: this interpreter's pip is the one known to exist.
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build_llama_server.sh")], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHON": sys.executable},
    )
    if done.returncode != 0:
        raise PeerError(f"scripts/build_llama_server.sh failed with {done.returncode} (its log is above)")
    return Path(done.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    # An orphaned server would keep every core busy and skew whatever runs next on this machine.
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Record:
    """One request. Times in seconds from the instant its burst was sent; server timings in ms, as reported."""

    index: int
    prompt_tokens: int
    ttft_s: float  # first generated token received
    total_s: float  # final chunk received
    tokens: int  # tokens the server generated for it (== n_predict, checked)
    tokens_streamed: int  # token ids seen in the stream: fewer when a token ends mid UTF-8 character
    cache_n: int  # prompt tokens the server reused from its KV cache
    prompt_n: int
    prompt_ms: float
    predicted_n: int
    predicted_ms: float

    @property
    def decode_ms_per_token(self) -> float:
        """Client-side: the gaps between the first and the last token, averaged."""
        return (self.total_s - self.ttft_s) * 1000 / max(1, self.tokens - 1)


class LlamaServer:
    """`async with LlamaServer(gguf) as peer:` a llama-server on 127.0.0.1, ready to serve, stopped on exit."""

    def __init__(self, model: str | Path, *, parallel: int = 8, ctx_per_slot: int = 2048, threads: int | None = None,
                 n_batch: int = 512, flash_attn: str = "off", extra_args: Sequence[str] = (),
                 binary: str | Path | None = None, start_timeout: float = START_TIMEOUT, request_timeout: float = 600.0):
        self.model = Path(model)
        self.parallel = parallel
        self.ctx_per_slot = ctx_per_slot
        self.threads = threads or os.cpu_count() or 1
        self.n_batch = n_batch
        self.flash_attn = flash_attn
        self.extra_args = list(extra_args)
        self.binary = Path(binary) if binary else None
        self.start_timeout = start_timeout
        self.request_timeout = request_timeout
        self.port = 0
        self.process: subprocess.Popen | None = None
        self.session: aiohttp.ClientSession | None = None
        self.log_path: Path | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        # Whatever llama-server would pick differently from charbot's batched backend is pinned to charbot's
        # value, so that only the serving loop differs (benchmarks/README.md has the reasons at length).
        return [
            str(self.binary), "-m", str(self.model), "--host", "127.0.0.1", "--port", str(self.port),
            "--parallel", str(self.parallel), "--cont-batching",
            # One KV stream per slot, as charbot (kv_unified=false); then llama.cpp gives each of the n_seq_max
            # sequences n_ctx / n_seq_max cells, so -c is the total. Explicit: with --parallel left on auto
            # this version turns the unified cache on.
            "-c", str(self.ctx_per_slot * self.parallel), "--no-kv-unified",
            "-t", str(self.threads), "-tb", str(self.threads),
            # charbot decodes at most 512 tokens per step (n_batch = n_ubatch = 512); the server's logical
            # batch defaults to 2048, which would let it take larger prefill steps.
            "-b", str(self.n_batch), "-ub", str(self.n_batch),
            # charbot turns flash attention off (as the high-level Llama does); the server's `auto` turns it on.
            "--flash-attn", self.flash_attn,
            "--fit", "off",  # nothing resized behind our back: the context asked for is the one measured
            "--no-webui",
            *self.extra_args,
        ]

    def log_tail(self, chars: int = 3000) -> str:
        if self._log:
            self._log.flush()
        try:
            return self.log_path.read_text(errors="replace")[-chars:] if self.log_path else ""
        except OSError:
            return ""

    async def __aenter__(self) -> LlamaServer:
        if not self.model.is_file():
            raise PeerError(f"no GGUF at {self.model}")
        if self.binary is None:
            self.binary = await asyncio.to_thread(server_binary)
        self.port = free_port()
        fd, log = tempfile.mkstemp(prefix="llama_server_peer_", suffix=".log")
        self.log_path = Path(log)
        self._log = os.fdopen(fd, "wb")
        self.process = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        # The final chunk echoes the whole prompt as JSON-escaped text: for 2048 tokens of non-Latin script
        # that can pass aiohttp's default 64 KiB line limit.
        self.session = aiohttp.ClientSession(read_bufsize=2**22)
        try:
            await self._wait_ready()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _wait_ready(self) -> None:
        """Until /health says 200: it answers 503 while the model loads and warms up, refuses before that."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout
        while True:
            if self.process.poll() is not None:
                raise PeerError(f"llama-server exited with {self.process.returncode} while starting:\n{self.log_tail()}")
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with self.session.get(f"{self.url}/health", timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        return
            if loop.time() > deadline:
                raise PeerError(f"llama-server not ready within {self.start_timeout:.0f} s:\n{self.log_tail()}")
            await asyncio.sleep(0.05)  # poll interval, not a wait for readiness

    async def __aexit__(self, *exc) -> None:
        if self.session:
            await self.session.close()
            self.session = None
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # llama-server finishes its slots' teardown on SIGTERM
            try:
                await asyncio.to_thread(self.process.wait, STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                await asyncio.to_thread(self.process.wait)
        if self._log:
            self._log.close()
            self._log = None
        if self.log_path:  # the errors that need it carry its tail
            with contextlib.suppress(OSError):
                self.log_path.unlink()

    async def complete(self, tokens: list[int], n_predict: int, *, seed: int = 1234, index: int = 0,
                       t0: float | None = None) -> Record:
        """One streamed greedy completion of exactly n_predict tokens; times from t0 (default: now)."""
        t0 = time.perf_counter() if t0 is None else t0
        body = {
            "prompt": tokens, "n_predict": n_predict, "temperature": 0, "ignore_eos": True, "cache_prompt": True,
            "stream": True, "seed": seed, "return_tokens": True,
        }
        ttft = None
        streamed = decoded = 0
        final = None
        timeout = aiohttp.ClientTimeout(total=self.request_timeout)
        async with self.session.post(f"{self.url}/completion", json=body, timeout=timeout) as r:
            if r.status != 200:
                raise PeerError(f"llama-server answered {r.status}: {(await r.text())[:500]}\n{self.log_tail()}")
            async for raw in r.content:  # server-sent events, one `data: {json}` line per chunk
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue  # blank separators and `: ping` comments
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    break
                chunk = json.loads(payload)
                if "error" in chunk:
                    raise PeerError(f"llama-server error: {chunk['error']}")
                decoded = max(decoded, int(chunk.get("tokens_predicted", 0)))
                if not chunk.get("stop"):
                    streamed += len(chunk.get("tokens") or ())
                    # The first chunk only opens the stream (no token yet); a held-back partial UTF-8 token
                    # still counts in tokens_predicted.
                    if ttft is None and decoded > 0:
                        ttft = time.perf_counter() - t0
                else:
                    final = chunk
                    break
        total = time.perf_counter() - t0
        if final is None:
            raise PeerError(f"llama-server closed the stream before its final chunk ({decoded} tokens):\n{self.log_tail()}")
        if decoded != n_predict:
            raise PeerError(f"llama-server generated {decoded} tokens, asked for {n_predict} (stop: {final.get('stop_type')})")
        t = final.get("timings") or {}
        return Record(
            index=index, prompt_tokens=len(tokens), ttft_s=ttft if ttft is not None else total, total_s=total,
            tokens=decoded, tokens_streamed=streamed, cache_n=int(t.get("cache_n", 0)),
            prompt_n=int(t.get("prompt_n", 0)), prompt_ms=float(t.get("prompt_ms", 0.0)),
            predicted_n=int(t.get("predicted_n", 0)), predicted_ms=float(t.get("predicted_ms", 0.0)),
        )

    async def burst(self, prompts: list[list[int]], n_predict: int, *, seed: int = 1234) -> list[Record]:
        """All prompts sent at the same instant; one record each, in prompt order."""
        t0 = time.perf_counter()
        return list(await asyncio.gather(*(
            self.complete(tokens, n_predict, seed=seed, index=i, t0=t0) for i, tokens in enumerate(prompts)
        )))


# --- self-check ----------------------------------------------------------------------------------------------

QUESTIONS = [
    "What do you do when the fog rolls in?", "Tell me about the worst storm you ever saw.",
    "How do you keep the lamp burning?", "Do you ever get lonely up here?", "What's for supper tonight?",
    "Who was keeper before you?", "What are the gulls saying today?", "Is the ninth step still loose?",
]
SYSTEM = ("You are Orla, the keeper of the North Point lighthouse. You are gruff but kind, you speak in short "
          "sentences, and you know every ship that passes.")


class Tokenizer:
    """The GGUF's vocabulary alone, through llama-cpp-python's low-level API: no weights, no context."""

    def __init__(self, model: Path):
        import llama_cpp as L
        from llama_cpp._logger import set_verbose

        set_verbose(False)
        self.L = L
        params = L.llama_model_default_params()
        params.vocab_only = True
        self.model = L.llama_model_load_from_file(str(model).encode(), params)
        if not self.model:
            raise PeerError(f"llama.cpp could not read the vocabulary of {model}")
        self.vocab = L.llama_model_get_vocab(self.model)

    def __call__(self, text: str) -> list[int]:
        data = text.encode()
        buf = (self.L.llama_token * (len(data) + 16))()  # never more tokens than bytes, plus specials
        n = self.L.llama_tokenize(self.vocab, data, len(data), buf, len(buf), False, True)
        if n < 0:
            raise PeerError(f"tokenizing needs {-n} tokens")
        return list(buf[:n])


def chat_prompts(tokenize: Tokenizer, n: int, tag: str) -> list[list[int]]:
    # The tag makes each burst's prompts new to the server: every burst prefills its questions, and only the
    # shared system prompt can come from the cache (as charbot's prefix reuse would give it too).
    return [tokenize(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n({tag}-{i}) "
                     f"{QUESTIONS[i % len(QUESTIONS)]}<|im_end|>\n<|im_start|>assistant\nOrla:") for i in range(n)]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


async def self_check(model: Path, threads: int, sizes: list[int], n_predict: int, parallel: int,
                     flash_attn: str, extra_args: list[str]) -> None:
    tokenize = Tokenizer(model)
    async with LlamaServer(model, parallel=parallel, threads=threads, flash_attn=flash_attn, extra_args=extra_args) as peer:
        print("llama-server:", " ".join(peer.command()))
        # Untimed: the first request after start-up faults the model's pages in.
        await peer.burst(chat_prompts(tokenize, 1, "warm"), n_predict)
        print(f"{'N':>3} {'TTFT p50':>9} {'TTFT max':>9} {'total p50':>10} {'total max':>10} {'decode ms/tok':>14}"
              f" {'server ms/tok':>14} {'prefill ms':>11} {'agg tok/s':>10}")
        for n in sizes:
            records = await peer.burst(chat_prompts(tokenize, n, f"n{n}"), n_predict)
            wall = max(r.total_s for r in records)
            server_tok = statistics.median(r.predicted_ms / max(1, r.predicted_n) for r in records)
            print(f"{n:>3} {pct([r.ttft_s for r in records], 0.5):>8.3f}s {max(r.ttft_s for r in records):>8.3f}s"
                  f" {pct([r.total_s for r in records], 0.5):>9.3f}s {wall:>9.3f}s"
                  f" {statistics.median(r.decode_ms_per_token for r in records):>14.1f} {server_tok:>14.1f}"
                  f" {statistics.median(r.prompt_ms for r in records):>11.1f} {sum(r.tokens for r in records) / wall:>10.1f}")
            print("    prompt tokens", [r.prompt_tokens for r in records], "prefilled", [r.prompt_n for r in records],
                  "cached", [r.cache_n for r in records], "streamed ids", [r.tokens_streamed for r in records])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, help="GGUF (default: charbot's embedded model)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--sizes", default="1,4,8")
    ap.add_argument("--n-predict", type=int, default=32)
    ap.add_argument("--flash-attn", default="off", choices=("off", "on", "auto"))
    ap.add_argument("--server-arg", action="append", default=[], help="one more llama-server argument (repeatable)")
    args = ap.parse_args()
    model = args.model
    if model is None:
        from charbot.models import embedded_model_path

        model = embedded_model_path()
    sizes = [int(s) for s in args.sizes.split(",")]
    asyncio.run(self_check(Path(model), args.threads, sizes, args.n_predict, args.parallel, args.flash_attn, args.server_arg))


if __name__ == "__main__":
    main()
