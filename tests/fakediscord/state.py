"""What the fake Discord knows: its app, users, guilds, messages, and every REST call made to it.

Payloads carry the fields discord.py reads; ids are real-looking snowflakes so that shard routing
(`(guild_id >> 22) % shards`) and timestamps parse the way they do against Discord.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

DISCORD_EPOCH_MS = 1420070400000
MESSAGE_CONTENT = 1 << 15
# Application flags: GATEWAY_MESSAGE_CONTENT (verified) and GATEWAY_MESSAGE_CONTENT_LIMITED (unverified apps).
APP_FLAG_MESSAGE_CONTENT = (1 << 18) | (1 << 19)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat()


@dataclass
class Call:
    """One REST request as the fake received it."""

    method: str
    path: str  # without the /api/v10 prefix, e.g. /channels/1/messages
    query: dict[str, str]
    json: Any
    at: float = field(default_factory=time.monotonic)
    status: int = 200


class FakeState:
    def __init__(self, *, token: str = "fake-token", message_content_enabled: bool = True, shards: int = 1):
        self._ids = itertools.count(1)
        self.token = token
        self.message_content_enabled = message_content_enabled
        self.shards = shards
        self.app_id = self.snowflake()
        self.owner = self.user("owner")
        self.bot_user = {"id": str(self.app_id), "username": "Orla", "discriminator": "0", "global_name": None, "avatar": None, "bot": True, "flags": 0}
        self.calls: list[Call] = []
        self.messages: dict[int, dict] = {}
        self.commands: list[dict] = []
        self.guilds: dict[int, dict] = {}
        self.dm_channels: dict[int, dict] = {}
        self.interactions: dict[str, dict] = {}  # token -> interaction payload
        self.files: dict[str, bytes] = {}  # attachment id -> the uploaded bytes
        self.rate_limits: list[list] = []  # [method, path_prefix, remaining_count, retry_after]
        self.refusals: list[list] = []  # [method, path_prefix, remaining_count, (status, code, message)]
        self.webhooks: dict[int, dict] = {}  # id -> webhook payload (its token included)

    # --- ids and objects -------------------------------------------------------------------------
    def snowflake(self) -> int:
        # A fresh millisecond per id, so consecutive guilds land on different shards as they would on Discord.
        self._last_ms = max(int(time.time() * 1000) - DISCORD_EPOCH_MS, getattr(self, "_last_ms", 0) + 1)
        return (self._last_ms << 22) | (next(self._ids) & 0x3FFFFF)

    def user(self, name: str, *, bot: bool = False) -> dict:
        return {"id": str(self.snowflake()), "username": name, "discriminator": "0", "global_name": name.title(), "avatar": None, "bot": bot}

    def add_guild(self, name: str = "Harbour", *, channels: tuple[str, ...] = ("general", "chat")) -> dict:
        gid = self.snowflake()
        everyone = {"id": str(gid), "name": "@everyone", "permissions": str((1 << 10) | (1 << 11) | (1 << 16) | (1 << 31) | (1 << 38)), "position": 0, "color": 0, "hoist": False, "managed": False, "mentionable": False, "flags": 0}
        guild = {
            "id": str(gid), "name": name, "icon": None, "owner_id": self.owner["id"], "unavailable": False,
            "roles": [everyone], "emojis": [], "stickers": [], "features": [], "member_count": 2, "large": False,
            "channels": [], "threads": [], "members": [], "voice_states": [], "presences": [],
            "joined_at": _iso(time.time()), "premium_tier": 0, "preferred_locale": "en-US",
            "verification_level": 0, "default_message_notifications": 0, "explicit_content_filter": 0,
            "mfa_level": 0, "system_channel_flags": 0, "nsfw_level": 0, "afk_timeout": 300,
        }
        for position, cname in enumerate(channels):
            guild["channels"].append({"id": str(self.snowflake()), "type": 0, "guild_id": str(gid), "name": cname, "position": position, "permission_overwrites": [], "nsfw": False, "parent_id": None, "topic": None, "last_message_id": None, "rate_limit_per_user": 0})
        guild["members"].append(self.member(self.bot_user))
        self.guilds[gid] = guild
        return guild

    def add_role(self, guild: dict, name: str, permissions: int = 0) -> dict:
        role = {"id": str(self.snowflake()), "name": name, "permissions": str(permissions), "position": len(guild["roles"]), "color": 0, "hoist": False, "managed": False, "mentionable": True, "flags": 0}
        guild["roles"].append(role)
        return role

    def grant_bot(self, guild: dict, permissions: int) -> dict:
        """Give the bot a role with `permissions` in `guild` (as the invite link's permissions do)."""
        role = self.add_role(guild, f"{self.bot_user['username']} role", permissions)
        next(m for m in guild["members"] if m["user"]["id"] == self.bot_user["id"])["roles"].append(role["id"])
        return role

    def add_thread(self, guild: dict, parent: dict, name: str) -> dict:
        thread = {"id": str(self.snowflake()), "type": 11, "guild_id": guild["id"], "parent_id": parent["id"], "name": name,
                  "owner_id": self.owner["id"], "message_count": 0, "member_count": 1, "rate_limit_per_user": 0, "flags": 0,
                  "thread_metadata": {"archived": False, "auto_archive_duration": 1440, "archive_timestamp": _iso(time.time()), "locked": False}}
        guild["threads"].append(thread)
        return thread

    def guild_of_channel(self, channel_id: str) -> str | None:
        return next((g["id"] for g in self.guilds.values() if any(c["id"] == str(channel_id) for c in g["channels"] + g["threads"])), None)

    # --- webhooks --------------------------------------------------------------------------------
    def add_webhook(self, channel: dict, name: str, *, by_bot: bool = True) -> dict:
        """A channel webhook; `by_bot=False`: one another integration or a member made (no application_id)."""
        wid = self.snowflake()
        creator = self.bot_user if by_bot else self.owner
        hook = {"id": str(wid), "type": 1, "guild_id": channel.get("guild_id"), "channel_id": channel["id"], "name": name,
                "avatar": None, "token": f"whtoken-{wid}", "application_id": str(self.app_id) if by_bot else None, "user": creator}
        self.webhooks[wid] = hook
        return hook

    def webhooks_in(self, channel_id: str) -> list[dict]:
        return [h for h in self.webhooks.values() if h["channel_id"] == str(channel_id)]

    def delete_webhook(self, webhook_id: int | str) -> dict | None:
        """As when a member deletes it in Server Settings → Integrations; its URL then answers 10015."""
        return self.webhooks.pop(int(webhook_id), None)

    def member(self, user: dict, roles: tuple[str, ...] = ()) -> dict:
        return {"user": user, "roles": list(roles), "joined_at": _iso(time.time()), "deaf": False, "mute": False, "flags": 0, "nick": None, "avatar": None}

    def channel(self, guild: dict, name: str) -> dict:
        return next(c for c in guild["channels"] if c["name"] == name)

    def dm_channel(self, user: dict) -> dict:
        cid = self.snowflake()
        channel = {"id": str(cid), "type": 1, "recipients": [user], "last_message_id": None}
        self.dm_channels[cid] = channel
        return channel

    def message(self, channel_id: int | str, author: dict, content: str, *, guild_id: int | str | None = None,
                member: dict | None = None, mentions: list[dict] = (), reference: dict | None = None,
                flags: int = 0) -> dict:
        mid = self.snowflake()
        msg = {
            "id": str(mid), "channel_id": str(channel_id), "author": author, "content": content,
            "timestamp": _iso(time.time()), "edited_timestamp": None, "tts": False, "mention_everyone": False,
            "mentions": list(mentions), "mention_roles": [], "attachments": [], "embeds": [], "pinned": False,
            "type": 0 if reference is None else 19, "flags": flags, "components": [],
        }
        if guild_id is not None:
            msg["guild_id"] = str(guild_id)
            if member is not None:
                msg["member"] = {k: v for k, v in member.items() if k != "user"}
        if reference is not None:
            msg["message_reference"] = {"message_id": reference["id"], "channel_id": reference["channel_id"], **({"guild_id": reference["guild_id"]} if "guild_id" in reference else {})}
            msg["referenced_message"] = reference
        self.messages[mid] = msg
        return msg

    # --- REST bookkeeping ------------------------------------------------------------------------
    def calls_to(self, method: str, path_part: str) -> list[Call]:
        return [c for c in self.calls if c.method == method and path_part in c.path and c.status < 300]

    def rate_limit(self, method: str, path_prefix: str, *, times: int = 1, retry_after: float = 0.5) -> None:
        """The next `times` matching requests get a 429 with `retry_after` seconds."""
        self.rate_limits.append([method, path_prefix, times, retry_after])

    def refuse(self, method: str, path_prefix: str, *, status: int = 403, code: int = 50013,
               message: str = "Missing Permissions", times: int = 1) -> None:
        """The next `times` matching requests fail with Discord's JSON error (default: 403 Missing Permissions)."""
        self.refusals.append([method, path_prefix, times, (status, code, message)])

    def take_rate_limit(self, method: str, path: str) -> float | None:
        return _take(self.rate_limits, method, path)

    def take_refusal(self, method: str, path: str) -> tuple[int, int, str] | None:
        return _take(self.refusals, method, path)


def _take(entries: list[list], method: str, path: str):
    for entry in entries:
        if entry[0] == method and path.startswith(entry[1]) and entry[2] > 0:
            entry[2] -= 1
            return entry[3]
    return None
