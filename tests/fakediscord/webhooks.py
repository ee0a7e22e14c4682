"""Channel webhooks as Discord serves them: create (POST /channels/{id}/webhooks, Manage Webhooks, at most
15 per channel: 30007), list (GET, Manage Webhooks), delete, and execute (POST /webhooks/{id}/{token},
`?wait=true` returns the message, `?thread_id=` posts in a thread of the webhook's channel) with the
per-message `username` and `avatar_url`. An unknown id or token is 10015 Unknown Webhook.

A webhook's message is authored by a pseudo-user with the webhook's id and the given username; it carries
`webhook_id`, and `application_id` when an application (the bot) owns the webhook, as on Discord."""

from __future__ import annotations

import json

from aiohttp import web

from .permissions import MANAGE_WEBHOOKS, channel_permissions

MAX_PER_CHANNEL = 15


def _json(data, status: int = 200) -> web.Response:
    return web.Response(status=status, body=json.dumps(data).encode(), headers={"Content-Type": "application/json"})


def _error(status: int, code: int, message: str, errors: dict | None = None) -> web.Response:
    return _json({"message": message, "code": code, **({"errors": errors} if errors else {})}, status)


UNKNOWN_WEBHOOK = (404, 10015, "Unknown Webhook")
MISSING_PERMISSIONS = (403, 50013, "Missing Permissions")


def _bad_name(field: str, name) -> dict | None:
    """Discord's rules for a webhook's name and a message's username: 1–80 characters, no 'clyde' or 'discord'."""
    if not isinstance(name, str) or not 1 <= len(name) <= 80:
        return {field: {"_errors": [{"code": "BASE_TYPE_BAD_LENGTH", "message": "Must be between 1 and 80 in length."}]}}
    if "clyde" in name.lower() or "discord" in name.lower():
        return {field: {"_errors": [{"code": "USERNAME_INVALID_CONTAINS", "message": "Username cannot contain \"discord\""}]}}
    return None


class WebhookRoutes:
    def __init__(self, server):
        self.server = server
        self.state = server.state
        r = server.app.router
        api = "/api/v10"
        r.add_post(api + "/channels/{cid}/webhooks", self.create)
        r.add_get(api + "/channels/{cid}/webhooks", self.list)
        r.add_delete(api + "/webhooks/{wid}", self.delete)
        r.add_delete(api + "/webhooks/{wid}/{token}", self.delete)

    def _may_manage(self, channel_id: str) -> bool:
        return bool(channel_permissions(self.state, channel_id, self.state.bot_user["id"]) & MANAGE_WEBHOOKS)

    async def create(self, request: web.Request) -> web.Response:
        cid = request.match_info["cid"]
        if self.state.guild_of_channel(cid) is None:
            return _error(400, 50003, "Cannot execute action on a DM channel")
        if not self._may_manage(cid):
            return _error(*MISSING_PERMISSIONS)
        body = await request.json()
        if (bad := _bad_name("name", body.get("name"))) is not None:
            return _error(400, 50035, "Invalid Form Body", bad)
        if len(self.state.webhooks_in(cid)) >= MAX_PER_CHANNEL:
            return _error(400, 30007, f"Maximum number of webhooks reached ({MAX_PER_CHANNEL})")
        guild_id = self.state.guild_of_channel(cid)
        channel = {"id": cid, "guild_id": guild_id}
        return _json(self.state.add_webhook(channel, body["name"]))

    async def list(self, request: web.Request) -> web.Response:
        cid = request.match_info["cid"]
        if not self._may_manage(cid):
            return _error(*MISSING_PERMISSIONS)
        return _json(self.state.webhooks_in(cid))

    async def delete(self, request: web.Request) -> web.Response:
        hook = self.state.webhooks.get(int(request.match_info["wid"]))
        token = request.match_info.get("token")
        if hook is None or token is not None and token != hook["token"]:
            return _error(*UNKNOWN_WEBHOOK)
        if token is None and not self._may_manage(hook["channel_id"]):
            return _error(*MISSING_PERMISSIONS)
        self.state.delete_webhook(hook["id"])
        return web.Response(status=204)

    async def execute(self, request: web.Request) -> web.Response:
        """POST /webhooks/{id}/{token} for a channel webhook (the server routes interaction tokens elsewhere)."""
        hook = self.state.webhooks.get(int(request.match_info["app"]))
        if hook is None or hook["token"] != request.match_info["token"]:
            return _error(*UNKNOWN_WEBHOOK)
        body = await request.json()
        content = body.get("content") or ""
        if len(content) > 2000:
            return _error(400, 50035, "Invalid Form Body", {"content": {"_errors": [{"code": "BASE_TYPE_MAX_LENGTH"}]}})
        if not content.strip() and not body.get("embeds"):
            return _error(400, 50006, "Cannot send an empty message")
        username = body.get("username") or hook["name"]
        if (bad := _bad_name("username", username)) is not None:
            return _error(400, 50035, "Invalid Form Body", bad)
        channel_id = hook["channel_id"]
        thread_id = request.query.get("thread_id")
        if thread_id is not None:
            guild = self.state.guilds.get(int(hook["guild_id"])) if hook["guild_id"] else None
            thread = next((t for t in (guild or {}).get("threads", []) if t["id"] == thread_id), None)
            if thread is None or thread["parent_id"] != hook["channel_id"]:
                return _error(400, 10003, "Unknown Channel")
            channel_id = thread_id
        author = {"id": hook["id"], "username": username, "discriminator": "0000", "avatar": None, "bot": True, "global_name": None}
        msg = self.state.message(channel_id, author, content, guild_id=hook["guild_id"])
        msg["webhook_id"] = hook["id"]
        if hook.get("application_id"):
            msg["application_id"] = hook["application_id"]
        msg["avatar_url"] = body.get("avatar_url")  # not Discord's field (it stores a hash): kept for assertions
        await self.server.gateway.dispatch("MESSAGE_CREATE", msg, guild_id=hook["guild_id"])
        if request.query.get("wait", "false").lower() in ("1", "true"):
            return _json(msg)
        return web.Response(status=204)
