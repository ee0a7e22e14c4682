"""`charbot export-gguf DIR`: write a trained model as GGUF so `charbot chat --model DIR` serves it via llama.cpp."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("export-gguf")
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--out", "-o", type=click.Path(path_type=Path, dir_okay=False), help="GGUF file to write (default: MODEL_DIR/model-<dtype>.gguf).")
@click.option(
    "--dtype", type=click.Choice(["f16", "f32", "q8_0", "q4_1"]), default="f16", show_default=True,
    help="Weight precision: f16/f32 exact, q8_0 near-exact and half the size, q4_1 fastest on CPU (as the embedded model).",
)
def export_gguf(model_dir: Path, out: Path | None, dtype: str) -> None:
    """Export an HF Llama-family model directory (e.g. from `charbot train`) to GGUF for llama.cpp."""
    from charbot.export.gguf import export_gguf as run

    path = run(model_dir, out, dtype)
    click.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB); chat with it: charbot chat --model {path}", err=True)
