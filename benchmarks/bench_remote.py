"""Reply latency through charbot's remote backend vs calling the same server directly with the same client.

Both paths use the same `openai.AsyncOpenAI` configuration (the backend's one client, and one made here), the same
messages and the same parameters (greedy, fixed seed, so both generate the same tokens: checked), alternating A/B
then B/A each round. Prints medians, means,
and the overhead of the backend (target <= 5%), for complete() and for stream() (time to the whole reply).

    python benchmarks/bench_remote.py [--rounds 30] [--max-tokens 24] [--base-url http://host:port/v1]

Without --base-url it starts llama-cpp-python's server with the embedded model (tests/llama_server.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
from pathlib import Path

from openai import AsyncOpenAI

from charbot.backends.base import Message, Prompt
from charbot.backends.remote import RemoteBackend
from charbot.generation import GenerationSettings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

MESSAGES = (
    Message("system", "You are Orla, a gruff lighthouse keeper who calls people 'sprat'."),
    Message("user", "Tell me about the worst storm you ever saw."),
)
SEED = 11


async def timed(coro) -> tuple[str, float]:
    start = time.perf_counter()
    text = await coro
    return text, time.perf_counter() - start


async def via_backend(backend: RemoteBackend, settings: GenerationSettings) -> str:
    return (await backend.complete(Prompt(messages=MESSAGES), settings)).text


async def via_backend_stream(backend: RemoteBackend, settings: GenerationSettings) -> str:
    return "".join([piece async for piece in backend.stream(Prompt(messages=MESSAGES), settings)])


def direct_params(model: str, max_tokens: int) -> dict:
    # Exactly what RemoteBackend sends for GenerationSettings(do_sample=False, seed=SEED, no_repeat_ngram_size=0).
    return dict(model=model, max_tokens=max_tokens, temperature=0.0, top_p=1.0, seed=SEED)


def messages() -> list[dict]:
    return [{"role": m.role, "content": m.content} for m in MESSAGES]


async def direct(client: AsyncOpenAI, model: str, max_tokens: int) -> str:
    out = await client.chat.completions.create(messages=messages(), **direct_params(model, max_tokens))
    return out.choices[0].message.content


async def direct_stream(client: AsyncOpenAI, model: str, max_tokens: int) -> str:
    chunks = await client.chat.completions.create(messages=messages(), stream=True, **direct_params(model, max_tokens))
    try:
        return "".join([c.choices[0].delta.content async for c in chunks if c.choices and c.choices[0].delta.content])
    finally:
        await chunks.close()


def summary(name: str, ours: list[float], theirs: list[float]) -> float:
    med_o, med_t = statistics.median(ours), statistics.median(theirs)
    overhead = med_o / med_t - 1
    print(f"{name:>9}: backend median {med_o * 1000:7.1f} ms (mean {statistics.mean(ours) * 1000:7.1f})   "
          f"direct median {med_t * 1000:7.1f} ms (mean {statistics.mean(theirs) * 1000:7.1f})   "
          f"overhead {overhead * 100:+.1f}%  {'OK' if overhead <= 0.05 else 'OVER 5%'}")
    return overhead


async def run(base_url: str, rounds: int, max_tokens: int) -> int:
    settings = GenerationSettings(max_new_tokens=max_tokens, do_sample=False, seed=SEED, no_repeat_ngram_size=0)
    backend = RemoteBackend(base_url=base_url, timeout=60)
    await backend.load()
    client = AsyncOpenAI(base_url=backend.base_url, api_key="EMPTY", timeout=60, max_retries=0)  # as the backend makes its own
    model = backend.model_id

    a, b = await via_backend(backend, settings), await direct(client, model, max_tokens)
    if a != b:
        print(f"paths generate different text, not comparable:\n  backend: {a!r}\n  direct:  {b!r}")
        return 1
    await via_backend_stream(backend, settings), await direct_stream(client, model, max_tokens)  # warm both

    results = {"complete": ([], []), "stream": ([], [])}
    pairs = {
        "complete": (lambda: via_backend(backend, settings), lambda: direct(client, model, max_tokens)),
        "stream": (lambda: via_backend_stream(backend, settings), lambda: direct_stream(client, model, max_tokens)),
    }
    for i in range(rounds):
        for kind, (ours, theirs) in pairs.items():
            order = [(0, ours), (1, theirs)] if i % 2 == 0 else [(1, theirs), (0, ours)]
            for slot, call in order:
                text, seconds = await timed(call())
                if text != a:
                    print(f"round {i} {kind}: text differs from the reference, results invalid")
                    return 1
                results[kind][slot].append(seconds)

    print(f"{rounds} rounds each, alternating; {max_tokens} greedy tokens; server {base_url}; model {model}")
    worst = max(summary(kind, *results[kind]) for kind in results)
    await client.close()
    await backend.aclose()
    return 0 if worst <= 0.05 else 2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--base-url", help="an already running OpenAI-compatible server (default: start llama.cpp's)")
    args = parser.parse_args()
    if args.rounds < 20:
        parser.error("--rounds must be at least 20")
    with contextlib.ExitStack() as stack:
        base_url = args.base_url
        if base_url is None:
            from llama_server import running_server

            base_url = stack.enter_context(running_server()).base_url
        return asyncio.run(run(base_url, args.rounds, args.max_tokens))


if __name__ == "__main__":
    sys.exit(main())
