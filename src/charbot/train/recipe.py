"""One recipe for every character: the settings `charbot train DATA -o OUT` leaves open are chosen from the data.

Only settings not given on the command line are chosen, each with its reason, and written to
training_config.json (the values) and its "chosen_from_data" entry (why). The rules are the Rick recipe
search's findings (docs/training.md), which carried over to Morty untouched:

* data with other speakers' examples (`prepare --cast`): the cast first, then the character (`--cast-first`),
  with named replies, since the name right before a line is what tells a small model whose voice to use;
  one pass over the cast (recipe D: the better voice, 10 minutes faster than two) and two over the
  character's own lines, at 4e-5;
* the character's lines only: two passes at 5e-5 (the plain defaults), unnamed;
* a character with many examples (over 2,000) needs fewer passes: one.

Early stopping (`--early-stopping`, stopping.py) is not chosen: measured on Rick's and Morty's val (44 and 34
lines), the first and the second pass differ by less than the noise of val itself, and ending on the lowest
validation loss picked the first pass's weights on a 0.005-nat difference, a model worse than the full run
on Rick's test episode by every measure (docs/training.md). The passes chosen here run to the end.
"""

from __future__ import annotations

from dataclasses import replace

from charbot.dataset import Example
from charbot.train.config import TrainConfig

MANY_EXAMPLES = 2000


def choose(cfg: TrainConfig, train_ex: list[Example], character: str) -> tuple[TrainConfig, dict[str, str]]:
    """`cfg` with every open (None) setting chosen, and why each was."""
    cast = sum(1 for ex in train_ex if ex.speaker and ex.speaker != character)
    own = len(train_ex) - cast
    why: dict[str, str] = {}
    chosen: dict = {}

    def pick(name: str, value, reason: str) -> None:
        if getattr(cfg, name) is None:
            chosen[name] = value
            why[name] = reason

    if cast:
        has = f"the data has {cast:,} examples of other speakers (prepare --cast)"
        pick("cast_first", True, f"{has}: they teach the show's words first, the character's {own:,} set the voice last")
        pick("name_replies", True, f"{has}: the name before each line says whose voice it is")
        pick("epochs", 1.0, "one pass over the cast (recipe D)")
        pick("character_epochs", 1.0 if own > MANY_EXAMPLES else 2.0,
             f"{own:,} examples of the character's: " + ("one pass is enough" if own > MANY_EXAMPLES else "two passes (recipe D)"))
        pick("learning_rate", 4e-5, "recipe D's rate for both phases")
    else:
        pick("cast_first", False, "the data has only the character's examples")
        pick("name_replies", False, "only the character speaks in the training targets: no name needed")
        pick("epochs", 1.0 if own > MANY_EXAMPLES else 2.0, f"{own:,} examples: " + ("one pass is enough" if own > MANY_EXAMPLES else "two passes"))
        pick("learning_rate", 5e-5, "the full fine-tune's rate for a 135M model")
    return replace(cfg, **chosen), why
