"""`charbot prepare SCRIPT --character NAME`: training data and a persona card from a script export."""

from __future__ import annotations

import click

from charbot.prepare.errors import ScriptError


@click.command("prepare")
@click.argument("script", required=False)
@click.option("--character", "-c", help="Speaker to model, as named in the script (case-insensitive).")
@click.option("--out", "-o", help="Output directory (default ./out/<character>).")
# Numbers are only parsed here; their ranges are checked once, by the pipeline (prepare.pipeline._validate).
@click.option("--context", type=int, default=7, show_default=True, help="Lines before each reply to include (never across episodes).")
@click.option("--alias", multiple=True, metavar="VARIANT=NAME", help='Merge speaker spellings, e.g. --alias "Pickle Rick=Rick" (repeatable).')
@click.option("--speaker-col", help="Speaker column name or 1-based number (default: detected).")
@click.option("--line-col", help="Dialogue column name or 1-based number (default: detected).")
@click.option("--episode-col", help="Episode/scene column name or number (default: detected; none = one episode).")
@click.option("--val-fraction", type=float, default=0.1, show_default=True,
              help="Share of episodes held out for validation (early stopping, recipe search).")
@click.option("--test-fraction", type=float, default=0.1, show_default=True,
              help="Share of episodes held out for `charbot eval` only: never trained, stopped or tuned on.")
@click.option("--wide-csv", is_flag=True, help="Also write the tutorial's wide table (response, context, context/0…).")
@click.option("--cast", type=int, default=0, show_default=True, metavar="MIN_LINES",
              help="Also train on every other speaker with at least MIN_LINES lines, each as itself (train episodes only): "
                   "more of the show's dialogue for a small script. 0: off.")
@click.option("--force", is_flag=True, help="Redraft persona.json (and --cast cards) even if they exist (they are kept by default).")
@click.option("--draft-with", metavar="MODEL",
              help="Also have a model write the cards' description and personality from sampled lines: a GGUF file, an HF "
                   "directory or hub id, or 'embedded'; the backend, base_url and provider settings apply as for chat. "
                   "Default: the offline statistical draft only.")
@click.option("--kaggle", metavar="OWNER/DATASET[/FILE]", help="Download the script from Kaggle (needs Kaggle credentials).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary table.")
def prepare(script, character, out, context, alias, speaker_col, line_col, episode_col, val_fraction, test_fraction, wide_csv, cast, force, draft_with,
            kaggle, quiet):
    """Turn a script (CSV/TSV/R export: who said what) into train/val/test JSONL and a persona card for one character."""
    from rich.console import Console

    from charbot.prepare import prepare as run_prepare

    if not character:
        raise ScriptError(script or "SCRIPT", "--character is missing", "name the speaker to model, e.g. --character Rick")
    if kaggle:
        if script:
            raise ScriptError("--kaggle", "given together with a SCRIPT path", "pass either a local SCRIPT or --kaggle, not both")
        from charbot.prepare.kaggle import download

        script = str(download(kaggle))
    if not script:
        raise ScriptError("SCRIPT", "missing", "pass the script file (CSV/TSV), e.g. charbot prepare script.csv --character Rick")
    result = run_prepare(
        script, character, out,
        context=context, aliases=alias, speaker_col=speaker_col, line_col=line_col, episode_col=episode_col,
        val_fraction=val_fraction, test_fraction=test_fraction, wide_csv=wide_csv, force=force, cast=cast, show_progress=not quiet,
        draft_with=_drafting_backend(draft_with) if draft_with else None,
    )
    if not quiet:
        console = Console()
        console.print(result.report.table())
        for name, path in sorted(result.files.items()):
            console.print(f"  [green]wrote[/green] {path}" if name != "persona.json" or "drafted" in result.report.card else f"  [yellow]kept[/yellow]  {path}")


def _drafting_backend(model: str):
    """The backend for --draft-with, from the same settings as chat (backend, base_url, provider, threads…)."""
    from charbot.backends import create_backend
    from charbot.config import load_settings

    return create_backend(load_settings(model=None if model == "embedded" else model))
