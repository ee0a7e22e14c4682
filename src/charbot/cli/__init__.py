"""`charbot` command line. Errors the user can fix print one line and exit non-zero, never a traceback."""

from __future__ import annotations

import sys

import click

from charbot.errors import CharbotError

COMMANDS = {
    "chat": "charbot.cli.chat:chat",
    "prepare": "charbot.cli.prepare:prepare",
    "discord": "charbot.cli.discord:discord_cmd",
    "serve": "charbot.cli.serve:serve_cmd",
    "train": "charbot.cli.train:train",
    "eval": "charbot.cli.evaluate:evaluate",
    "export-gguf": "charbot.cli.export:export_gguf",
    "memory": "charbot.cli.memory:memory_cmd",
    "card": "charbot.cli.card:card",
    "prompt": "charbot.cli.prompt:prompt_cmd",
}


class LazyGroup(click.Group):
    """Subcommands are imported when used, so `charbot chat` never pays for training imports."""

    def list_commands(self, ctx):
        return sorted(name for name in COMMANDS if self._load(name) is not None)

    def get_command(self, ctx, name):
        return self._load(name)

    @staticmethod
    def _load(name):
        if name not in COMMANDS:
            return None
        module, _, attr = COMMANDS[name].partition(":")
        import importlib

        try:
            return getattr(importlib.import_module(module), attr)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("charbot.cli"):
                return None  # command not built yet
            raise


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="charbot")
def cli() -> None:
    """Character chatbots from scripts: prepare, train, eval, chat, serve on Discord or over an OpenAI-compatible API."""


def main(argv: list[str] | None = None) -> None:
    try:
        code = cli.main(args=argv, prog_name="charbot", standalone_mode=False)
    except CharbotError as exc:
        click.echo(f"charbot: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.UsageError as exc:  # a bad flag value or a missing argument: one line, like every other error
        command = exc.ctx.command_path if exc.ctx is not None else "charbot"
        click.echo(f"charbot: error: {' '.join(exc.format_message().split())} — see `{command} --help`", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (click.Abort, KeyboardInterrupt, EOFError):
        click.echo("", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
