"""`charbot eval DATA`: base vs persona-prompted base vs fine-tuned models on the test split."""

from __future__ import annotations

from pathlib import Path

import click

from charbot.cli.options import Settings, settings_options
from charbot.errors import ConfigError


def _parse_model(spec: str):
    from charbot.eval.run import Candidate

    label, sep, ref = spec.partition("=")
    if not sep or not label or not ref:
        raise ConfigError(f"--model {spec!r}: expected LABEL=PATH_OR_HUB_ID", "e.g. --model fine-tuned=charbot-model")
    return Candidate(label.strip(), ref.strip(), persona=True)


@click.command("eval")
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--model", "models", multiple=True, help="LABEL=DIR_OR_HUB_ID of a model to compare (repeatable), e.g. fine-tuned=charbot-model.")
@click.option("--base", "base", default=None, help="Base model compared with and without the persona (default: embedded SmolLM2-135M-Instruct).")
@click.option("--out", "-o", "out", type=click.Path(path_type=Path), default=Path("charbot-eval"), show_default=True, help="Report directory (report.md, comparison.png, results.json).")
@click.option("--selection/--no-selection", default=True, show_default=True,
              help="Rank the real reply among 20 (hits@1, MRR): 20 scored candidates per context, most of eval's time on a CPU. "
                   "--no-selection when only perplexity and the judge are wanted (e.g. comparing cards).")
@click.option("--split", type=click.Choice(["test", "val"]), default="test", show_default=True,
              help="Held-out split to score: test (never trained, stopped or tuned on) or val. Without a test.jsonl, val, with a note.")
@click.option("--limit", type=int, default=40, show_default=True, help="Held-out contexts to score.")
@click.option("--max-new-tokens", type=int, default=None,
              help="Cap on each sampled reply. Default: the longest real reply among the scored contexts (a lower cap would cut replies the character could have said).")
@click.option("--samples", type=int, default=4, show_default=True,
              help="Replies sampled per context for the judge and diversity (drawn in one batch); more give a steadier score.")
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed.")
@click.option("--persona", "persona", metavar="CARD", default=None,
              help="Evaluate the persona rows with this character card (any format), as chat and Discord send it: its text and the "
                   "lorebook entries each context fires, example dialogue and greeting. Default: the system message in the data's JSONL.")
@click.option("--name-replies", is_flag=True, help="Show the base model the character's turns as 'Name: line' and begin each reply with the name, as Discord does (trained models follow their training_config.json).")
@settings_options(("temperature",), ("top_k",), ("top_p",))
def evaluate(data: Path, models: tuple[str, ...], base: str | None, out: Path, selection: bool, split: str, limit: int, max_new_tokens: int | None, samples: int,
             seed: int, persona: str | None, name_replies: bool, settings: Settings) -> None:
    """Compare models on DATA's test split: perplexity, response selection (hits@1/20, MRR), judge ratio, distinct-1/2, length.

    Replies are sampled as chat and Discord would sample them: the generation settings (flags, CHARBOT_*, charbot.toml)."""
    from rich.console import Console
    from rich.table import Table

    from charbot.eval.run import Candidate, evaluate as run

    if limit < 1:
        raise ConfigError("--limit must be at least 1", "pass a positive number of held-out contexts")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise ConfigError("--max-new-tokens must be at least 1", "pass a positive cap, or leave it out for the longest real reply")
    if samples < 1:
        raise ConfigError("--samples must be at least 1", "pass how many replies to sample per context, e.g. --samples 4")
    from charbot.persona import load_card

    card = load_card(persona) if persona else None  # a bad card fails before any model loads
    candidates = [Candidate("base", base, persona=False, named=name_replies), Candidate("base + persona", base, persona=True, named=name_replies)]
    candidates += [_parse_model(m) for m in models]
    if card is not None:
        for cand in candidates:
            cand.label += f" [{Path(persona).name}]" if cand.persona else ""
    console = Console(stderr=True)
    with console.status("evaluating") as status:
        rows = run(data, out, candidates, limit=limit, max_new_tokens=max_new_tokens, seed=seed, samples=samples, split=split, selection=selection,
                   sampler=settings.generation, progress=lambda label, i, n: status.update(f"{label}: reply {i}/{n}"), card=card)
    table = Table("model", "perplexity", "hits@1", "MRR", "judge ratio", "distinct-2", "mean words")
    for r in rows:
        table.add_row(r.label, f"{r.perplexity:.2f}", f"{r.hits_at_1:.2f}" if selection else "-", f"{r.mrr:.2f}" if selection else "-", f"{r.judge_ratio:.2f}", f"{r.distinct_2:.2f}", f"{r.mean_words:.1f}")
    console.print(table)
    console.print(f"report: {out / 'report.md'}")
