"""The bot's permissions in a channel, computed the way Discord does (base from @everyone and the member's
roles, Administrator grants all, then the channel's overwrites: @everyone, roles, the member); a thread
has its parent's. The REST routes that need a permission ask this, and discord.py computes the same from
the GUILD_CREATE payload, so both sides agree."""

from __future__ import annotations

ADMINISTRATOR = 1 << 3
MANAGE_CHANNELS = 1 << 4
MANAGE_WEBHOOKS = 1 << 29
ALL = (1 << 53) - 1


def _guild_of(state, channel_id: str) -> tuple[dict, dict] | None:
    for guild in state.guilds.values():
        for channel in guild["channels"] + guild["threads"]:
            if channel["id"] == str(channel_id):
                return guild, channel
    return None


def channel_permissions(state, channel_id: str | int, user_id: str | int) -> int:
    """What `user_id` may do in `channel_id`; 0 outside any guild (DMs have no webhooks)."""
    found = _guild_of(state, str(channel_id))
    if found is None:
        return 0
    guild, channel = found
    if channel.get("parent_id") and channel["type"] in (10, 11, 12):
        return channel_permissions(state, channel["parent_id"], user_id)
    if guild["owner_id"] == str(user_id):
        return ALL
    member = next((m for m in guild["members"] if m["user"]["id"] == str(user_id)), None)
    roles = {r["id"]: int(r["permissions"]) for r in guild["roles"]}
    member_roles = member["roles"] if member else []
    perms = roles.get(guild["id"], 0)
    for rid in member_roles:
        perms |= roles.get(rid, 0)
    if perms & ADMINISTRATOR:
        return ALL
    overwrites = {o["id"]: o for o in channel.get("permission_overwrites", [])}
    everyone = overwrites.get(guild["id"])
    if everyone:
        perms = (perms & ~int(everyone["deny"])) | int(everyone["allow"])
    allow = deny = 0
    for rid in member_roles:
        if rid in overwrites:
            allow |= int(overwrites[rid]["allow"])
            deny |= int(overwrites[rid]["deny"])
    perms = (perms & ~deny) | allow
    mine = overwrites.get(str(user_id))
    if mine:
        perms = (perms & ~int(mine["deny"])) | int(mine["allow"])
    return perms


def set_overwrite(channel: dict, target_id: str, *, allow: int = 0, deny: int = 0, member: bool = True) -> None:
    """Replace the channel's overwrite for a member (type 1) or role (type 0)."""
    kept = [o for o in channel.get("permission_overwrites", []) if o["id"] != str(target_id)]
    kept.append({"id": str(target_id), "type": 1 if member else 0, "allow": str(allow), "deny": str(deny)})
    channel["permission_overwrites"] = kept
