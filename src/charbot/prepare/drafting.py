"""The cards `prepare` drafts: the character's and, with --cast, every cast member's, from the training split's
lines only (card.py measures and chooses; model_draft.py lets a model rewrite the prose)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from charbot.persona import CharacterCard
from charbot.prepare.card import CardDrafts, DraftLine, LineSpool
from charbot.prepare.report import PrepareReport


def draft_cards(
    title: str, source: str, unit: str, rep: PrepareReport, spool: LineSpool, lines: Counter[str], first_line: str,
    keep: Callable[[DraftLine], bool], main: list[str], cast: list[str], draft_with,
) -> dict[str, CharacterCard]:
    """The cards asked for (`main`: the character, when its card is drafted; `cast`: cast members), drafted from
    the lines `keep` accepts, and redrafted by `draft_with` (a Backend) when given."""
    if not main and not cast:
        return {}
    drafts = CardDrafts(title, [*main, *cast], lines, unit)
    drafts.run(spool, keep)
    # a cast member heard only in held-out units gets no card: there is nothing to draft it from
    names = [*main, *(n for n in cast if drafts.habits[n].lines)]
    cards = {n: drafts.card(n, _notes(source, rep, n, lines[n]), first_line if n in main else "") for n in names}
    if draft_with is None:
        return cards
    from charbot.prepare.model_draft import redraft_all

    return redraft_all({n: (c, drafts.sample(n)) for n, c in cards.items()}, draft_with)


def _notes(source: str, rep: PrepareReport, name: str, lines: int) -> str:
    return (
        f"Drafted by `charbot prepare` from {source}: {rep.rows_read:,} rows read, {rep.rows_kept:,} kept; "
        f"{name} has {lines:,} lines; {rep.speakers:,} speakers in all (most lines: {', '.join(f'{n} {c:,}' for n, c in rep.top_speakers[:5])}). "
        "Everything here comes from the training split: the description and personality are measured, the example dialogue, "
        "greetings and lorebook lines are real lines from the script. Edit this card freely."
    )
