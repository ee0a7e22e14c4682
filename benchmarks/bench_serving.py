"""Many conversations at once: charbot's llama.cpp backend against llama.cpp's own server, same work, one run.

Three servers of the same GGUF on this box, interleaved burst by burst so drift in machine speed hits all alike:
- **charbot one at a time**: the scheduler admitting one generation at a time (the tutorial's one blocking call at
  a time; charbot's default, `parallel=1`);
- **charbot parallel=P**: continuous batching over P sequences (the scheduler admits P);
Both charbot sides are one backend in this process: two llama.cpp contexts driven from two threads in one process
slowed each other's decode steps about 2x here, an artefact no charbot process has (it runs one model).
- **llama-server --parallel P**: llama.cpp's server with continuous batching (benchmarks/llama_server_peer.py),
  reached over loopback HTTP, as a user who runs it instead of charbot would.

For each N, bursts of N requests sent at the same instant: N fresh conversations of the sample character (the
engine's prompt, rendered and tokenized once; the same token ids go to every side), greedy decoding with EOS
ignored, exactly --max-tokens tokens each. Rounds per N are enough for --samples requests per point (p95 needs
>= 20). Reported per side: latency p50/p95 (burst start → last token), prefill (time to first token, p50) and
decode (ms per token after the first, p50), aggregate tok/s (N × tokens / slowest request); the ratio
charbot/llama-server; and the decode-step ceiling measured in the same run (bench_decode_step.py): N / step(N)
tok/s, the most any batching server can reach with prompts already read.

    python benchmarks/bench_serving.py [--parallel 8] [--sizes 1,4,8,16] [--max-tokens 64] [--threads N] [--samples 20]
    python benchmarks/bench_serving.py --soak 10000      # RSS over 10,000 messages through the Discord bot

Targets at N = 8: charbot aggregate tok/s >= 1.0x llama-server's, p95 <= 1.1x llama-server's.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "benchmarks"), str(ROOT)]

import psutil  # noqa: E402

from fakediscord import FakeDiscord  # noqa: E402
from fakediscord.harness import running_bot  # noqa: E402

QUESTIONS = [
    "What do you do when the fog rolls in?", "Tell me about the worst storm you ever saw.",
    "How do you keep the lamp burning?", "Do you ever get lonely up here?", "What's for supper tonight?",
    "Who was keeper before you?", "What are the gulls saying today?", "Is the ninth step still loose?",
]


@dataclass
class Sample:
    ttft: float  # from the burst's start to this request's first token
    total: float  # to its last token
    tokens: int


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


class CharbotSide:
    """The backend behind the engine's scheduler: what `charbot discord` runs, minus Discord."""

    def __init__(self, name: str, backend, scheduler, settings):
        self.name, self.backend, self.scheduler, self.settings = name, backend, scheduler, settings

    async def one(self, prompt, t0: float) -> Sample:
        first = None
        async with self.scheduler.slot(None):
            async for _piece in self.backend.stream(prompt, self.settings):
                first = first or time.perf_counter()
        return Sample(first - t0, time.perf_counter() - t0, self.settings.max_new_tokens)

    async def burst(self, prompts, tokens) -> list[Sample]:
        t0 = time.perf_counter()
        return list(await asyncio.gather(*(self.one(p, t0) for p in prompts)))


class PeerSide:
    def __init__(self, name: str, server, n_predict: int):
        self.name, self.server, self.n_predict = name, server, n_predict

    async def burst(self, prompts, tokens) -> list[Sample]:
        records = await self.server.burst(tokens, self.n_predict)
        return [Sample(r.ttft_s, r.total_s, r.tokens) for r in records]


async def settled(limit: float = 3.0) -> None:
    """Until the machine is idle again (busy-waiting threads of the side that ran last have gone to sleep), so
    a side never runs while another's threads still spin; at most `limit` seconds."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and await asyncio.to_thread(psutil.cpu_percent, 0.1) > 25:
        pass


def summary(samples: list[list[Sample]]) -> dict[str, float]:
    flat = [s for burst in samples for s in burst]
    decode = [(s.total - s.ttft) / max(1, s.tokens - 1) for s in flat]
    throughput = [sum(s.tokens for s in burst) / max(s.total for s in burst) for burst in samples]
    return {"p50": pct([s.total for s in flat], .5), "p95": pct([s.total for s in flat], .95), "ttft": pct([s.ttft for s in flat], .5),
            "decode_ms": pct(decode, .5) * 1000, "tok_s": sum(throughput) / len(throughput), "n": len(flat)}


async def serving(args) -> None:
    from bench_decode_step import measure
    from llama_server_peer import LlamaServer

    from charbot.backends.llamacpp import LlamaCppBackend
    from charbot.engine import Engine
    from charbot.factory import sample_card_path
    from charbot.generation import GenerationSettings
    from charbot.memory_sqlite import SqliteStore
    from charbot.models import embedded_model_path
    from charbot.persona import load_card
    from charbot.scheduler import Scheduler

    sizes = [int(n) for n in args.sizes.split(",")]
    model = embedded_model_path()
    settings = GenerationSettings(max_new_tokens=args.max_tokens, do_sample=False, no_repeat_ngram_size=0, ignore_eos=True)
    batched = LlamaCppBackend(model, context_window=2048, threads=args.threads, parallel=args.parallel)
    await batched.load()
    engine = Engine(batched, SqliteStore(Path(tempfile.mkdtemp()) / "prompts.db"), load_card(sample_card_path()), settings)

    async def prompts(n: int, tag: str):
        """N fresh conversations; the tag keeps each burst's questions new to every side's cache. Built before
        a burst is timed (the engine reads its store for each), so the store's cost is not in the numbers."""
        built = [(await engine.build_prompt("", f"({tag}-{i}) {QUESTIONS[i % len(QUESTIONS)]}", speaker=f"sailor{i}"))[0].prompt for i in range(n)]
        return built, [batched.prompt_tokens(p) for p in built]

    load = os.getloadavg()
    async with LlamaServer(model, parallel=args.parallel, ctx_per_slot=2048, threads=args.threads) as server:
        sides = [CharbotSide("charbot one at a time", batched, Scheduler(1), settings),
                 CharbotSide(f"charbot parallel={args.parallel}", batched, Scheduler(args.parallel), settings),
                 PeerSide(f"llama-server --parallel {args.parallel}", server, args.max_tokens)]
        for side in sides:  # untimed: first-use costs out of the way
            await side.burst(*await prompts(1, "warm"))
        results: dict[int, dict[str, list[list[Sample]]]] = {}
        for n in sizes:
            results[n] = {side.name: [] for side in sides}
            for r in range(math.ceil(args.samples / n)):
                # interleaved, each round starting with another side: every side gets the same prompts
                for side in sides[r % len(sides):] + sides[: r % len(sides)]:
                    await settled()
                    results[n][side.name].append(await side.burst(*await prompts(n, f"n{n}r{r}")))
                print(f"  N={n} round {r + 1} done", file=sys.stderr, flush=True)
    prompt_tokens = len((await prompts(1, "x"))[1][0])
    await batched.aclose()
    await engine.store.close()
    ceiling = {n: n / measure(model, n, args.threads)[1] for n in sizes}  # tok/s with every prompt already read
    load_after = os.getloadavg()

    print(f"model {model.name}; greedy, exactly {args.max_tokens} tokens per request; prompts "
          f"{prompt_tokens} tokens; threads {args.threads}; {os.cpu_count()} cores; load {load[0]:.1f} → {load_after[0]:.1f}")
    names = [s.name for s in sides]
    print("| N | side | requests | p50 | p95 | prefill p50 | decode ms/tok | aggregate tok/s | of ceiling |")
    print("|---|---|---|---|---|---|---|---|---|")
    table = {n: {name: summary(results[n][name]) for name in names} for n in sizes}
    for n in sizes:
        for name in names:
            t = table[n][name]
            print(f"| {n} | {name} | {t['n']} | {t['p50']:.2f} s | {t['p95']:.2f} s | {t['ttft'] * 1000:.0f} ms | "
                  f"{t['decode_ms']:.1f} | {t['tok_s']:.1f} | {t['tok_s'] / ceiling[n]:.2f} |")
    print()
    print("| N | decode-step ceiling tok/s | charbot/llama-server aggregate tok/s | charbot/llama-server p95 |")
    print("|---|---|---|---|")
    ours, peer = names[1], names[2]
    for n in sizes:
        a, b = table[n][ours], table[n][peer]
        print(f"| {n} | {ceiling[n]:.1f} | {a['tok_s'] / b['tok_s']:.2f}x | {a['p95'] / b['p95']:.2f}x |")
    if 8 in table:
        a, b = table[8][ours], table[8][peer]
        print(f"N=8: charbot/llama-server aggregate tok/s {a['tok_s'] / b['tok_s']:.2f} (target >= 1.0), "
              f"p95 {a['p95'] / b['p95']:.2f} (target <= 1.1)")


async def soak(args) -> None:
    """10,000 messages through the real bot with a scripted model: RSS must stay flat."""
    from conftest import ScriptedBackend

    tmp = Path(tempfile.mkdtemp())
    proc = psutil.Process()
    channels_n, wave = 50, 50
    async with FakeDiscord() as fake:
        state = fake.state
        guild = state.add_guild(channels=tuple(f"room{i}" for i in range(channels_n)))
        channels = [state.channel(guild, f"room{i}") for i in range(channels_n)]
        users = [state.user(f"sailor{i}") for i in range(channels_n)]
        backend = ScriptedBackend(respond=lambda p: "Aye, the lamp is lit and the sea is calm tonight.", parallel=8)
        async with running_bot(fake, backend, tmp / "soak.db", discord_max_queue=1000, discord_max_inflight=8,
                               max_messages_per_conversation=40, prune_interval=1.0) as bot:
            mention = dict(guild=guild, mentions=[fake.state.bot_user])
            sent = 0
            rss_1k = None
            started = time.monotonic()
            while sent < args.soak:
                before = len(state.calls_to("POST", "/messages"))
                await asyncio.gather(*(
                    fake.say(channels[i % channels_n], users[i % channels_n], f"<@{bot.user.id}> message {sent + i}", **mention)
                    for i in range(wave)
                ))
                await fake.wait_for(lambda: len(state.calls_to("POST", "/messages")) >= before + wave, timeout=60)
                sent += wave
                # The fake server is test furniture in this process: keep its logs from counting as the bot's growth.
                state.calls.clear()
                state.messages.clear()
                for session in fake.gateway.sessions.values():
                    session.log.clear()
                backend.prompts.clear()  # the scripted model's own record of prompts, likewise
                backend.settings.clear()
                if sent == 1000:
                    gc.collect()
                    rss_1k = proc.memory_info().rss
                if sent % 2000 == 0:
                    print(f"  {sent} messages, RSS {proc.memory_info().rss / 2**20:.1f} MiB, "
                          f"{await bot.engine.store.count_messages()} stored", flush=True)
            gc.collect()
            await asyncio.sleep(1.5)  # one more retention sweep
            rss_end = proc.memory_info().rss
            print(f"soak: {sent} messages in {time.monotonic() - started:.0f}s (scripted replies, 50 channels, 8 in flight)")
            print(f"  RSS after 1,000: {rss_1k / 2**20:.1f} MiB; at the end: {rss_end / 2**20:.1f} MiB; "
                  f"ratio {rss_end / rss_1k:.3f} (target <= 1.10)")
            print(f"  stored messages at the end: {await bot.engine.store.count_messages()} "
                  f"(cap 40 per conversation x {channels_n}); retention sweeps {bot.retention.sweeps}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--samples", type=int, default=20, help="requests per point at least (a p95 needs >= 20)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--sizes", default="1,4,8,16", help="channel counts N, comma-separated")
    ap.add_argument("--soak", type=int, default=0, help="run the RSS soak with this many messages instead")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(soak(args) if args.soak else serving(args))


if __name__ == "__main__":
    main()
