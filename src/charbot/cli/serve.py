"""`charbot serve`: the characters as an OpenAI-compatible API (`/v1`), with a page to talk to them (`/`)."""

from __future__ import annotations

import asyncio

import click

from charbot.cli.options import TALK_SETTINGS, settings_options
from charbot.config import Settings
from charbot.errors import ConfigError

SERVE_SETTINGS = (
    ("serve_host", "--host", "--serve-host"), ("serve_port", "--port", "--serve-port"), ("serve_api_key_env",), ("serve_max_inflight",),
    ("serve_max_queue",), ("serve_max_body_bytes",), ("serve_max_tokens",), ("persona_dir",),
)


@click.command("serve")
@settings_options(*TALK_SETTINGS, *SERVE_SETTINGS)
def serve_cmd(settings: Settings) -> None:
    """Serve the characters over an OpenAI-compatible API, with a web page to talk to them."""
    try:
        from charbot.serve.server import api_key, run
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("charbot"):
            raise
        raise ConfigError(f"charbot serve needs {exc.name}, which is not installed", "pip install 'charbot[serve]'") from None

    def listening(host: str, port: int) -> None:
        shown = f"[{host}]" if ":" in host else host
        click.echo(f"charbot serve: listening on http://{shown}:{port}/ (OpenAI API at /v1, the page at /); loading the model…", err=True)

    key = api_key(settings)  # before loading the model: a missing key should fail fast
    asyncio.run(run(settings, key, on_listening=listening))
