"""`charbot prompt MESSAGE…`: exactly what the model would receive for those messages in a fresh conversation,
and which lorebook entries fired and why. Built by the engine and rendered by the backend, as chat and
Discord do."""

from __future__ import annotations

import asyncio
import sys

import click

from charbot.backends.worker import WorkerBackend
from charbot.cli.options import settings_options
from charbot.config import Settings
from charbot.factory import build_engine
from charbot.memory import Turn
from charbot.memory_sqlite import SqliteStore
from charbot.prompt import BuiltPrompt

PROMPT_SETTINGS = (
    ("model", "-m"), ("backend", "-b"), ("base_url",), ("persona", "-p"), ("lorebook",), ("prompt_format",),
    ("context_window",), ("max_new_tokens",), ("user_name",),
)


@click.command("prompt")
@settings_options(*PROMPT_SETTINGS)
@click.option("--raw", is_flag=True, help="Print the text the model reads (its chat template applied) instead of the chat messages.")
@click.option("--speaker", help="Name the messages' author, as Discord does (default: unnamed, as in the terminal).")
@click.argument("messages", nargs=-1, required=True)
def prompt_cmd(settings: Settings, raw: bool, speaker: str | None, messages: tuple[str, ...]) -> None:
    """Show the model input for MESSAGES (sent one after another in a fresh conversation) on stdout, and what
    went into it — lorebook entries that fired and why, tokens — on stderr."""
    built, describe = asyncio.run(_build(settings, list(messages), speaker))
    if raw:
        text = describe["rendered"]
        if text is None:
            raise click.UsageError("--raw: this backend's server applies its own chat template; leave out --raw to see the chat messages")
        click.echo(text, nl=False)
        click.echo()
    else:
        click.echo(show_messages(built))
    sys.stdout.flush()  # the model input first, then what went into it
    click.echo(describe["summary"], err=True)
    for line in lore_lines(built):
        click.echo(line, err=True)


async def _build(settings: Settings, messages: list[str], speaker: str | None) -> tuple[BuiltPrompt, dict]:
    # a throwaway memory, never the configured one: the conversation shown is a fresh one, nothing is saved
    engine = build_engine(settings, store=SqliteStore(":memory:"))
    try:
        if isinstance(engine.backend, WorkerBackend):
            await engine.backend.load()  # its tokenizer and chat template
        history = [Turn("user", m, speaker) for m in messages[:-1]]
        built, card = await engine.build_prompt("", messages[-1], speaker, history=history)
        summary = (
            f"prompt: {built.prompt_tokens} tokens of {engine.backend.context_window} ({engine.backend.describe()}, "
            f"{engine.prompt_format} format, {card.name}); example dialogue {'kept' if built.examples_kept else 'left out'}; "
            f"{built.turns_kept} of {built.turns_available} earlier messages"
        )
        return built, {"rendered": engine.backend.render(built.prompt), "summary": summary}
    finally:
        await engine.backend.aclose()
        await engine.store.close()


def show_messages(built: BuiltPrompt) -> str:
    p = built.prompt
    if not p.is_chat:
        return p.text or ""
    out = [f"--- {m.role} ---\n{m.content}" for m in p.messages]
    if p.reply_prefix:
        out.append(f"--- reply begins ---\n{p.reply_prefix}")
    return "\n".join(out)


def lore_lines(built: BuiltPrompt) -> list[str]:
    if not built.lore and not built.lore_notes:
        return ["lorebook: no entry fired"]
    placed = sum(u.placed for u in built.lore)
    lines = [f"lorebook: {len(built.lore)} entr{'y' if len(built.lore) == 1 else 'ies'} fired, {placed} in the prompt"]
    for u in built.lore:
        e = u.entry
        lines.append(f"  {'+' if u.placed else '-'} {e.label} ({e.book} #{e.index}): {e.why} → {u.note}, {u.tokens} tokens")
    lines += [f"  ! {note}" for note in built.lore_notes]
    return lines
