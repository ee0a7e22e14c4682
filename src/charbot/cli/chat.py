"""`charbot chat`: talk to a character in the terminal. Piped input: one message per line in, one
`Name: reply` line out, so it can be scripted."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import click

from charbot.config import Settings, default_data_dir
from charbot.engine import Engine
from charbot.errors import BackendError, CharbotError
from charbot.factory import build_engine
from charbot.memory import MemoryStoreError
from charbot.persona import load_card, substitute
from charbot.cli.options import model_options

HELP = """Commands:
  /reset            forget this conversation
  /persona FILE     switch to the character card in FILE
  /help             this text
  /quit             leave (or Ctrl-D)"""


@click.command()
@model_options
@click.option("--conversation", "-c", default="cli", show_default=True, help="Conversation name; memory is kept per name.")
@click.option("--stream/--no-stream", default=None, help="Print replies as they are generated (default: on in a terminal).")
@click.option("--verbose", "-v", is_flag=True, help="After each reply, say on stderr how many tokens it took and what the prompt cache saved.")
def chat(settings: Settings, conversation: str, stream: bool | None, verbose: bool) -> None:
    """Chat with a character in the terminal."""
    interactive = sys.stdin.isatty()
    asyncio.run(_run(settings, f"cli:{conversation}", interactive, interactive if stream is None else stream, verbose))


async def _run(settings: Settings, conversation: str, interactive: bool, stream: bool, verbose: bool) -> None:
    engine = build_engine(settings)
    try:
        await engine.store.open()
        await engine.warm_up()
        if interactive:
            await _repl(engine, conversation, stream, verbose)
        else:
            await _piped(engine, conversation, verbose)
    finally:
        await engine.backend.aclose()
        await engine.store.close()


async def _command(engine: Engine, conversation: str, line: str) -> str | None:
    """Handle a /command; returns what to print, or None when the line is not a command."""
    if not line.startswith("/"):
        return None
    cmd, _, arg = line.partition(" ")
    if cmd in ("/quit", "/exit"):
        raise EOFError
    if cmd == "/help":
        return HELP
    if cmd == "/reset":
        n = await engine.reset(conversation)
        return f"(forgot {n} messages)"
    if cmd == "/persona":
        if not arg.strip():
            return f"(talking to {(await engine.persona_for(conversation)).name}; /persona FILE to switch)"
        try:
            card = await engine.set_persona(conversation, load_card(Path(arg.strip()).expanduser()))
        except CharbotError as exc:
            return f"(error: {exc})"
        return f"(now talking to {card.name})"
    return f"(unknown command {cmd}; /help lists them)"


def _report(engine: Engine, before: dict[str, int], reply) -> None:
    """One line on stderr per reply (--verbose): its cost, and the prompt tokens reused instead of read again."""
    after = engine.backend.cache_stats()
    parts = [f"{reply.completion_tokens} tokens in {reply.seconds:.2f} s", f"{reply.turns_in_prompt} turns in the prompt"]
    if after:
        reused = after.get("reused_tokens", 0) - before.get("reused_tokens", 0)
        restored = after.get("hits", 0) - before.get("hits", 0)
        parts.append(f"{reused} prompt tokens reused" + (" (state restored from the prompt cache)" if restored else ""))
    click.echo(f"({'; '.join(parts)})", err=True)


async def _session(engine: Engine, conversation: str, read: Callable[[], Awaitable[str | None]], notice, answer) -> None:
    """Read lines until end of input or /quit: commands go to `notice`, messages to `answer`."""
    while (line := await read()) is not None:
        line = line.strip()
        if not line:
            continue
        try:
            out = await _command(engine, conversation, line)
        except EOFError:
            return
        if out is not None:
            notice(out)
            continue
        try:
            await answer(line)
        except (BackendError, MemoryStoreError) as exc:  # one failed reply (a server hiccup) does not end the chat
            click.echo(f"charbot: error: {exc}", err=True)


async def _piped(engine: Engine, conversation: str, verbose: bool) -> None:
    loop = asyncio.get_running_loop()

    async def read() -> str | None:
        return await loop.run_in_executor(None, sys.stdin.readline) or None

    async def answer(line: str) -> None:
        before = engine.backend.cache_stats()
        reply = await engine.reply(conversation, line)
        print(f"{reply.persona}: {' '.join(reply.text.split())}", flush=True)
        if verbose:
            _report(engine, before, reply)

    await _session(engine, conversation, read, lambda out: print(" ".join(out.split()), flush=True), answer)


async def _repl(engine: Engine, conversation: str, stream: bool, verbose: bool) -> None:
    try:
        import readline

        history = default_data_dir() / "chat_history"
        history.parent.mkdir(parents=True, exist_ok=True)
        if history.exists():
            readline.read_history_file(history)
    except (ImportError, OSError):
        readline = None  # type: ignore[assignment]
    card = await engine.persona_for(conversation)
    click.secho(f"Talking to {card.name} ({engine.backend.describe()}). /help for commands.", dim=True)
    if not await engine.store.history(conversation, 1) and card.data.first_mes:
        click.secho(f"{card.name}: ", bold=True, nl=False)
        click.echo(substitute(card.data.first_mes, card.name, engine.user_name))
    loop = asyncio.get_running_loop()

    async def read() -> str | None:
        try:
            return await loop.run_in_executor(None, input, "You: ")
        except EOFError:
            click.echo()
            return None

    async def answer(line: str) -> None:
        name = (await engine.persona_for(conversation)).name
        click.secho(f"{name}: ", bold=True, nl=False)
        shown = ""

        def show(text: str) -> None:
            nonlocal shown
            sys.stdout.write(text[len(shown) :])
            sys.stdout.flush()
            shown = text

        before = engine.backend.cache_stats()
        reply = await engine.reply(conversation, line, on_update=show if stream else None)
        if reply.text.startswith(shown) and shown:
            show(reply.text)
            click.echo()
        elif shown:  # the streamed text was replaced (a retry or the fallback)
            click.echo(f"\r{name}: {reply.text}")
        else:
            click.echo(reply.text)
        if verbose:
            _report(engine, before, reply)

    try:
        await _session(engine, conversation, read, lambda out: click.secho(out, dim=True), answer)
    finally:
        if readline is not None:
            try:
                readline.write_history_file(history)
            except OSError:
                pass
