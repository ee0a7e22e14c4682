"""The invite link: the permissions the bot needs, and nothing more."""

from __future__ import annotations

import discord

SCOPES = ("bot", "applications.commands")


def needed_permissions() -> discord.Permissions:
    return discord.Permissions(
        view_channel=True, send_messages=True, send_messages_in_threads=True, read_message_history=True, use_application_commands=True
    )


def invite_url(application_id: int) -> str:
    return discord.utils.oauth_url(application_id, permissions=needed_permissions(), scopes=SCOPES)
