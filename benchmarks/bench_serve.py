"""`charbot serve` over HTTP against the engine called in-process: what the API layer costs.

Two sides, each one llama.cpp model in a process of its own (see README: one model per process), the same
settings (the embedded GGUF, threads, context 2048, parallel P, the scheduler admitting P):
- **in-process**: the engine `charbot serve` builds (`serve_engine`), called here with `Engine.ask` and an
  `on_update` callback, as a transport in this process would;
- **HTTP API**: a `charbot serve` subprocess, called over loopback with streamed `POST /v1/chat/completions`
  (a bare aiohttp client reading the server-sent events, so a client library's own parsing is not counted).

Identical work: the same question to the sample character on both sides, a new tag each round (so only the
persona's system prompt can come from a cache), greedy (temperature 0), end of generation ignored, exactly
--max-tokens tokens each (no repeat-ngram ban on either side); rounds alternate which side goes first.
- **single stream**: one request at a time; time to first token (request → first text) and tok/s
  (tokens / request → last token), --rounds samples per side.
- **N concurrent streams**: bursts of N requests at the same instant; aggregate tok/s = N × tokens / slowest
  request of the burst, --rounds bursts per side.

Ratios are HTTP / in-process for tok/s and in-process / HTTP for time to first token (both: 1.0 = no cost,
higher = better); targets >= 0.95.

    python benchmarks/bench_serve.py [--rounds 20] [--concurrent 8] [--max-tokens 64] [--threads N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "benchmarks"), str(ROOT)]

import aiohttp  # noqa: E402

from bench_serving import QUESTIONS, pct, settled  # noqa: E402
from cli_process import ServeCli, user_env  # noqa: E402


class InProcess:
    name = "in-process engine"

    def __init__(self, engine, settings):
        self.engine, self.settings = engine, settings

    async def one(self, question: str, t0: float) -> tuple[float, float, str]:
        first = None

        def shown(_text: str) -> None:
            nonlocal first
            first = first or time.perf_counter()

        reply = await self.engine.ask(question, settings=self.settings, on_update=shown)
        return first - t0, time.perf_counter() - t0, reply.text


class OverHttp:
    name = "HTTP API"

    def __init__(self, http: aiohttp.ClientSession, url: str, max_tokens: int):
        self.http, self.url, self.max_tokens = http, url, max_tokens

    async def one(self, question: str, t0: float) -> tuple[float, float, str]:
        body = {"model": "orla", "stream": True, "temperature": 0, "max_tokens": self.max_tokens, "ignore_eos": True,
                "messages": [{"role": "user", "content": question}]}
        first, text = None, ""
        async with self.http.post(self.url, json=body) as response:
            assert response.status == 200, await response.text()
            async for line in response.content:
                if not line.startswith(b"data: {"):
                    continue
                event = json.loads(line[6:])
                if event["choices"] and (piece := event["choices"][0]["delta"].get("content")):
                    first = first or time.perf_counter()
                    text += piece
                if "charbot" in event:  # clean-up changed the streamed text (cut to a sentence): the reply is this
                    text = event["charbot"]["replaced"]
        return first - t0, time.perf_counter() - t0, text


async def burst(side, questions: list[str]) -> list[tuple[float, float, str]]:
    t0 = time.perf_counter()
    return list(await asyncio.gather(*(side.one(q, t0) for q in questions)))


def questions(n: int, tag: str) -> list[str]:
    return [f"({tag}-{i}) {QUESTIONS[i % len(QUESTIONS)]}" for i in range(n)]


async def main(args) -> None:
    from charbot.config import load_settings
    from charbot.serve.server import serve_engine

    home = Path(tempfile.mkdtemp())
    flags = dict(parallel=args.concurrent, threads=args.threads, no_repeat_ngram_size=0, serve_max_inflight=args.concurrent,
                 serve_max_queue=64, serve_max_tokens=args.max_tokens)
    env = {f"CHARBOT_{k.upper()}": str(v) for k, v in flags.items()}
    settings = load_settings(db_path=str(home / "in-process.db"), **flags)
    engine = serve_engine(settings)
    await engine.warm_up()
    sampling = engine.settings.but(max_new_tokens=args.max_tokens, do_sample=False, ignore_eos=True)
    load = os.getloadavg()
    async with ServeCli(env=user_env(home, **env), cwd=home) as server, aiohttp.ClientSession() as http:
        await server.wait_ready()
        sides = [InProcess(engine, sampling), OverHttp(http, f"{server.base_url}/chat/completions", args.max_tokens)]
        for side in sides:  # untimed: first-use costs out of the way
            await burst(side, questions(args.concurrent, "warm"))
        single = {s.name: [] for s in sides}
        many = {s.name: [] for s in sides}
        texts: dict[str, list[str]] = {s.name: [] for s in sides}
        for r in range(args.rounds):
            for side in sides[r % 2:] + sides[: r % 2]:
                await settled()
                [one] = await burst(side, questions(1, f"s{r}"))
                single[side.name].append(one)
                texts[side.name].append(one[2])
                await settled()
                many[side.name].append(await burst(side, questions(args.concurrent, f"c{r}")))
            print(f"  round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    await engine.backend.aclose()
    await engine.store.close()
    load_after = os.getloadavg()

    # The same replies on both sides: the same work was done (greedy; a stop string would end both alike).
    same = sum(a == b for a, b in zip(*texts.values()))
    inproc_bursts, api_bursts = many.values()
    same_burst = sum(x[2] == y[2] for a, b in zip(inproc_bursts, api_bursts) for x, y in zip(a, b))
    print(f"model {engine.backend.model_id}; greedy, EOS ignored, {args.max_tokens} tokens per request; replies identical "
          f"on both sides: {same}/{args.rounds} single, {same_burst}/{args.rounds * args.concurrent} concurrent; threads "
          f"{args.threads}; parallel {args.concurrent}; {os.cpu_count()} cores; load {load[0]:.1f} → {load_after[0]:.1f}")
    print()
    print(f"| side | single: TTFT p50 | TTFT p95 | tok/s p50 | tok/s p5 | N={args.concurrent}: aggregate tok/s mean | p50 | bursts |")
    print("|---|---|---|---|---|---|---|---|")
    table = {}
    for name in single:
        ttft = [s[0] for s in single[name]]
        rate = [args.max_tokens / s[1] for s in single[name]]
        aggregate = [args.concurrent * args.max_tokens / max(s[1] for s in b) for b in many[name]]
        table[name] = {"ttft": pct(ttft, .5), "rate": pct(rate, .5), "aggregate": statistics.mean(aggregate)}
        print(f"| {name} | {pct(ttft, .5) * 1000:.0f} ms | {pct(ttft, .95) * 1000:.0f} ms | {pct(rate, .5):.1f} | {pct(rate, .05):.1f} | "
              f"{statistics.mean(aggregate):.1f} | {pct(aggregate, .5):.1f} | {len(aggregate)} |")
    inproc, api = table["in-process engine"], table["HTTP API"]
    print()
    print("| measure | HTTP API vs in-process | target |")
    print("|---|---|---|")
    print(f"| single-stream tok/s (p50) | {api['rate'] / inproc['rate']:.3f}x | >= 0.95x |")
    print(f"| single-stream time to first token (p50; in-process / HTTP) | {inproc['ttft'] / api['ttft']:.3f}x | >= 0.95x |")
    print(f"| N={args.concurrent} aggregate tok/s (mean) | {api['aggregate'] / inproc['aggregate']:.3f}x | >= 0.95x |")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20, help="samples per side and point (a p95 needs >= 20)")
    ap.add_argument("--concurrent", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.rounds < 20:
        print(f"note: {args.rounds} rounds is too few for a p95", file=sys.stderr)
    asyncio.run(main(args))
