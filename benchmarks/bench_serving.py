"""Many conversations at once, through the REAL bot (CharBot + discord.py) and the loopback fake Discord.

For N = 1, 4, 8, 16 channels each sending one message at the same instant, it reports the p50/p95 time from
MESSAGE_CREATE to the reply POST and the aggregate generated tokens/s, for the batched configuration
(`parallel`, scheduler capacity = parallel) and for a serial baseline measured in the same run (parallel=1,
one generation in flight: the tutorial's one blocking call at a time). Same model, same reply cap, same seed.

    python benchmarks/bench_serving.py [--parallel 8] [--rounds 2] [--threads N] [--max-tokens 64]
    python benchmarks/bench_serving.py --soak 10000      # RSS over 10,000 messages (fast scripted replies)

Targets at N = 8: p95 <= 2x the N = 1 latency, aggregate tok/s >= 3x single-stream; soak: RSS at the end
within 10% of RSS after the first 1,000 messages.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

import psutil  # noqa: E402

from fakediscord import FakeDiscord  # noqa: E402
from fakediscord.harness import running_bot  # noqa: E402

QUESTIONS = [
    "What do you do when the fog rolls in?", "Tell me about the worst storm you ever saw.",
    "How do you keep the lamp burning?", "Do you ever get lonely up here?", "What's for supper tonight?",
    "Who was keeper before you?", "What are the gulls saying today?", "Is the ninth step still loose?",
]


@dataclass
class Round:
    latencies: list[float]
    tokens: int
    seconds: float


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


async def burst(fake, bot, guild, channels, users) -> Round:
    """One message in each channel at the same instant; wait for every reply."""
    for ch in channels:  # fresh conversations each round: every round sees the same prompt sizes
        bot.engine.reset(f"discord:{ch['id']}")
    tokens_before = bot.metrics.tokens._value.get()
    mention = dict(guild=guild, mentions=[fake.state.bot_user])
    start = time.monotonic()
    sent = await asyncio.gather(*(
        fake.say(ch, user, f"<@{bot.user.id}> {QUESTIONS[i % len(QUESTIONS)]}", **mention)
        for i, (ch, user) in enumerate(zip(channels, users))
    ))
    ids = {m["id"] for m in sent}

    def replies():
        return {str(c.json["message_reference"]["message_id"]): c.at for c in fake.state.calls_to("POST", "/messages")
                if c.json and c.json.get("message_reference") and str(c.json["message_reference"]["message_id"]) in ids}

    got = await fake.wait_for(lambda: len(replies()) == len(ids) and replies(), timeout=600)
    latencies = [got[m["id"]] - start for m in sent]
    return Round(latencies, int(bot.metrics.tokens._value.get() - tokens_before), max(got.values()) - start)


async def measure(label: str, backend, db: Path, sizes: list[int], rounds: int, **settings) -> dict[int, list[Round]]:
    async with FakeDiscord() as fake:
        state = fake.state
        guild = state.add_guild(channels=tuple(f"room{i}" for i in range(max(sizes))))
        channels = [state.channel(guild, f"room{i}") for i in range(max(sizes))]
        users = [state.user(f"sailor{i}") for i in range(max(sizes))]
        results: dict[int, list[Round]] = {}
        async with running_bot(fake, backend, db, discord_max_queue=1000, queue_timeout=3600, **settings) as bot:
            print(f"[{label}] ready: capacity {bot.gate.capacity}, backend {bot.engine.backend.describe()}", flush=True)
            await burst(fake, bot, guild, channels[:1], users[:1])  # untimed: first-use costs out of the way
            for n in sizes:
                results[n] = []
                for _ in range(rounds):
                    r = await burst(fake, bot, guild, channels[:n], users[:n])
                    results[n].append(r)
                    print(f"[{label}] N={n:2d}: p50 {pct(r.latencies, .5):5.2f}s p95 {pct(r.latencies, .95):5.2f}s "
                          f"{r.tokens} tok in {r.seconds:.2f}s", flush=True)
                    state.calls.clear()
        return results


def summarise(results: dict[int, list[Round]]) -> dict[int, tuple[float, float, float]]:
    out = {}
    for n, rounds in results.items():
        lat = [x for r in rounds for x in r.latencies]
        out[n] = (pct(lat, .5), pct(lat, .95), sum(r.tokens for r in rounds) / sum(r.seconds for r in rounds))
    return out


async def serving(args) -> None:
    from charbot.backends.llamacpp import LlamaCppBackend
    from charbot.backends.llamacpp_batched import LlamaCppBatchedBackend
    from charbot.models import embedded_model_path

    tmp = Path(tempfile.mkdtemp())
    sizes = [int(n) for n in args.sizes.split(",")]
    common = dict(max_new_tokens=args.max_tokens, seed=1234, threads=args.threads)
    model = embedded_model_path()
    load = os.getloadavg()
    serial = await measure("serial", LlamaCppBackend(model, context_window=2048, threads=args.threads, seed=1234),
                           tmp / "serial.db", sizes, args.rounds, parallel=1, discord_max_inflight=1, **common)
    batched = await measure(f"parallel={args.parallel}", LlamaCppBatchedBackend(model, context_window=2048, threads=args.threads, parallel=args.parallel),
                            tmp / "batched.db", sizes, args.rounds, parallel=args.parallel, **common)
    load_after = os.getloadavg()
    s, b = summarise(serial), summarise(batched)
    single = s[sizes[0]][2]
    print()
    print(f"model {model.name}, max {args.max_tokens} new tokens, {args.rounds} rounds per N, threads {args.threads or os.cpu_count()}, "
          f"{os.cpu_count()} cores, load average {load[0]:.1f} before / {load_after[0]:.1f} after")
    print(f"| N | serial p50 | serial p95 | serial tok/s | parallel={args.parallel} p50 | p95 | tok/s | tok/s vs single-stream |")
    print("|---|---|---|---|---|---|---|---|")
    for n in sizes:
        print(f"| {n} | {s[n][0]:.2f} s | {s[n][1]:.2f} s | {s[n][2]:.1f} | {b[n][0]:.2f} s | {b[n][1]:.2f} s | {b[n][2]:.1f} | {b[n][2] / single:.2f}x |")
    if 1 in s and 8 in s:
        print(f"N=8 p95 / N=1 latency (parallel): {b[8][1] / b[1][0]:.2f} (target <= 2); "
              f"aggregate tok/s at N=8 / single-stream: {b[8][2] / single:.2f} (target >= 3)")
        print(f"serial at N=8: p95 / N=1 {s[8][1] / s[1][0]:.2f}; batched p95 at N=8 vs serial p95 at N=8: {b[8][1] / s[8][1]:.2f}")


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
        backend = ScriptedBackend(respond=lambda p: "Aye, the lamp is lit and the sea is calm tonight.")
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
                          f"{bot.engine.store.count_messages()} stored", flush=True)
            gc.collect()
            await asyncio.sleep(1.5)  # one more retention sweep
            rss_end = proc.memory_info().rss
            print(f"soak: {sent} messages in {time.monotonic() - started:.0f}s (scripted replies, 50 channels, 8 in flight)")
            print(f"  RSS after 1,000: {rss_1k / 2**20:.1f} MiB; at the end: {rss_end / 2**20:.1f} MiB; "
                  f"ratio {rss_end / rss_1k:.3f} (target <= 1.10)")
            print(f"  stored messages at the end: {bot.engine.store.count_messages()} "
                  f"(cap 40 per conversation x {channels_n}); retention sweeps {bot.retention.sweeps}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--sizes", default="1,4,8,16", help="channel counts N, comma-separated")
    ap.add_argument("--soak", type=int, default=0, help="run the RSS soak with this many messages instead")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(soak(args) if args.soak else serving(args))


if __name__ == "__main__":
    main()
