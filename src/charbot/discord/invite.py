"""The invite link: the permissions the bot needs, and nothing more."""

from __future__ import annotations

import discord

SCOPES = ("bot", "applications.commands")


def needed_permissions(*, cast: bool = False) -> discord.Permissions:
    """With a cast, Manage Webhooks too: each character speaks through the channel's webhook."""
    return discord.Permissions(
        view_channel=True, send_messages=True, send_messages_in_threads=True, read_message_history=True, use_application_commands=True,
        manage_webhooks=cast,
    )


def invite_url(application_id: int, *, cast: bool = False) -> str:
    return discord.utils.oauth_url(application_id, permissions=needed_permissions(cast=cast), scopes=SCOPES)
