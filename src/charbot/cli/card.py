"""`charbot card convert IN OUT` and `charbot card show FILE`: character cards in every format."""

from __future__ import annotations

import asyncio

import click

from charbot.cards import CardFile, read_card_file, write_card_file
from charbot.cli.options import settings_options
from charbot.config import Settings

FIELDS = ("description", "personality", "scenario", "first_mes", "mes_example", "system_prompt", "post_history_instructions", "creator_notes")


@click.group("card")
def card() -> None:
    """Character cards: JSON (V1/V2/V3), PNG/APNG (SillyTavern, chub, RisuAI) and CHARX."""


@card.command("convert")
@click.argument("source", metavar="IN")
@click.argument("target", metavar="OUT")
@click.option("--lorebook", "lorebook_path", metavar="FILE", help="Add this lorebook's entries (lorebook_v3 or SillyTavern world info) to the card's own book.")
def convert(source: str, target: str, lorebook_path: str | None) -> None:
    """Write the card in IN as OUT, in the format OUT's extension names: .json (V3), .png (chara + ccv3
    chunks, the card's icon or a generated avatar as picture) or .charx."""
    card_file = read_card_file(source)
    if lorebook_path:
        card_file.card, added = with_lorebook(card_file, lorebook_path)
        click.echo(f"added {added} lorebook entries from {lorebook_path}", err=True)
    for warning in write_card_file(card_file, target):
        click.echo(f"charbot: warning: {warning}", err=True)
    click.echo(f"wrote {target} ({card_file.card.name})")


def with_lorebook(card_file: CardFile, path: str):
    from charbot.lorebook import load_lorebook

    extra = load_lorebook(path)
    data = card_file.card.data
    book = extra if data.character_book is None else data.character_book.model_copy(update={"entries": [*data.character_book.entries, *extra.entries]})
    return card_file.card.model_copy(update={"data": data.model_copy(update={"character_book": book})}), len(extra.entries)


@card.command("show")
@settings_options(("model", "-m"), ("backend", "-b"), ("base_url",))
@click.argument("path", metavar="FILE")
def show(settings: Settings, path: str) -> None:
    """Summarise the card in FILE: name, spec and format, field sizes in tokens (the configured model's
    tokenizer), greetings and lorebook entries."""
    card_file = read_card_file(path)
    for line in asyncio.run(_summary(settings, card_file)):
        click.echo(line)


async def _summary(settings: Settings, card_file: CardFile) -> list[str]:
    """The summary, sizes counted by the configured model's tokenizer (loaded for it, then closed)."""
    from charbot.backends import create_backend
    from charbot.backends.worker import WorkerBackend

    backend = create_backend(settings)
    if not isinstance(backend, WorkerBackend):
        return summary(card_file, backend.count_tokens, f"≈ tokens (estimated: the {backend.name} backend has no tokenizer here)")
    await backend.load()
    try:
        return summary(card_file, lambda text: backend.count_tokens(text) if text else 0, f"tokens ({backend.model_id})")
    finally:
        await backend.aclose()


def summary(card_file: CardFile, count, counted_by: str) -> list[str]:
    card = card_file.card
    d = card.data
    where = {"png": f"PNG card, chunks {' + '.join(card_file.chunks)}", "charx": f"CHARX archive, {len(card_file.assets)} asset file(s)", "json": "JSON"}
    lines = [f"{card.name}  ({card.spec} {card.spec_version}, {where[card_file.format]})"]
    lines.append(f"{counted_by}: " + ", ".join(f"{f} {count(getattr(d, f))}" for f in FIELDS))
    greetings = [d.first_mes, *d.alternate_greetings]
    lines.append(f"greetings: {len([g for g in greetings if g])} ({len(d.alternate_greetings)} alternate, {len(d.group_only_greetings or [])} group-only)")
    lines += [f"  {i}. {_short(g)}" for i, g in enumerate(greetings, 1) if g]
    book = d.character_book
    if book is None or not book.entries:
        lines.append("lorebook: none")
    else:
        lines.append(f"lorebook{' ' + repr(book.name) if book.name else ''}: {len(book.entries)} entries, scan depth "
                     f"{book.scan_depth if book.scan_depth is not None else 'default (2)'}, token budget {book.token_budget or 'default'}")
        lines += [_entry_line(i, e, count) for i, e in enumerate(book.entries)]
    if d.assets:
        lines.append("assets: " + ", ".join(f"{a.type}:{a.name or '?'} ({a.uri[:40]})" for a in d.assets))
    return lines


def _entry_line(i: int, e, count) -> str:
    from charbot.lore_scan import rule_for

    rule = rule_for(e)
    kind = "constant" if e.constant else ("selective, secondary: " + ", ".join(e.secondary_keys or [])) if e.selective and e.secondary_keys else "keys"
    where = f"at depth {rule.depth} as {rule.role}" if rule.position == "depth" else rule.position
    keys = ", ".join(e.keys) if not e.use_regex else "regex " + ", ".join(f"/{k}/" for k in e.keys)
    state = "" if e.enabled else " [disabled]"
    return f"  #{i} {e.label}{state}: {keys or '(no keys)'} | {kind} | {where} | order {e.insertion_order:g} | {count(rule.content)} tokens"


def _short(text: str, width: int = 90) -> str:
    one = " ".join(text.split())
    return one if len(one) <= width else one[: width - 1] + "…"
