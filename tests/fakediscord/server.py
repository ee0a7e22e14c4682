"""The fake Discord REST API under /api/v10 plus the gateway, on one loopback aiohttp server.

Every request is recorded (`state.calls`); `state.rate_limit(...)` injects 429s shaped like Discord's
(JSON `retry_after` and a `Via` header, without which discord.py treats a 429 as a proxy's, not Discord's).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from loopback import Loopback, listen

from .gateway import Gateway
from .state import APP_FLAG_MESSAGE_CONTENT, Call, FakeState
from .webhooks import WebhookRoutes

API = "/api/v10"


def _json(data: Any, status: int = 200, headers: dict | None = None) -> web.Response:
    # discord.py parses a body as JSON only when Content-Type is exactly application/json.
    # (aiohttp's content_type= would append "; charset=utf-8", which discord.py then reads as text).
    return web.Response(status=status, body=json.dumps(data).encode(), headers={"Content-Type": "application/json", **(headers or {})})


class FakeDiscord(Loopback):
    def __init__(self, state: FakeState | None = None):
        self.state = state or FakeState()
        self.gateway = Gateway(self.state)
        self.app = web.Application(middlewares=[self._record])
        self.app.router.add_get("/gateway", self.gateway.handle)
        r = self.app.router
        r.add_get(API + "/users/@me", self._me)
        r.add_get(API + "/oauth2/applications/@me", self._app_info)
        r.add_get(API + "/applications/@me", self._app_info)
        r.add_get(API + "/gateway", self._gateway_url)
        r.add_get(API + "/gateway/bot", self._gateway_bot)
        r.add_put(API + "/applications/{app}/commands", self._put_commands)
        r.add_get(API + "/applications/{app}/commands", self._get_commands)
        r.add_post(API + "/channels/{cid}/typing", self._typing)
        r.add_post(API + "/channels/{cid}/messages", self._create_message)
        r.add_patch(API + "/channels/{cid}/messages/{mid}", self._edit_message)
        r.add_get(API + "/channels/{cid}/messages/{mid}", self._get_message)
        r.add_post(API + "/interactions/{iid}/{token}/callback", self._interaction_callback)
        r.add_patch(API + "/webhooks/{app}/{token}/messages/@original", self._edit_original)
        r.add_post(API + "/webhooks/{app}/{token}", self._followup)
        r.add_get("/attachments/{aid}/{name}", self._attachment)  # the CDN, for uploaded files
        self.webhooks = WebhookRoutes(self)
        self._runner: web.AppRunner | None = None
        self.port = 0

    # --- lifecycle -------------------------------------------------------------------------------
    @property
    def api_url(self) -> str:
        return self.root + API

    @property
    def gateway_url(self) -> str:
        return f"ws://{self.host}:{self.port}/gateway"

    async def start(self) -> "FakeDiscord":
        self._runner, self.port = await listen(self.app, self.host)
        self.gateway.url = self.gateway_url
        return self

    async def stop(self) -> None:
        for session in self.gateway.sessions.values():
            if session.ws is not None and not session.ws.closed:
                await session.ws.close(code=1001)
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> "FakeDiscord":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    # --- test helpers ----------------------------------------------------------------------------
    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if inspect.isawaitable(value):  # an async predicate (a store's count, say)
                value = await value
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")
            await asyncio.sleep(0.02)

    async def wait_for_calls(self, method: str, path_part: str, count: int = 1, timeout: float = 10.0) -> list[Call]:
        return await self.wait_for(lambda: len(self.state.calls_to(method, path_part)) >= count and self.state.calls_to(method, path_part), timeout)

    async def say(self, channel: dict, author: dict, content: str, *, guild: dict | None = None, member: dict | None = None,
                  mentions: list[dict] = (), reply_to: dict | None = None) -> dict:
        """A user posts a message: stored, then MESSAGE_CREATE to the sessions that own the guild."""
        gid = guild["id"] if guild else None
        if guild is not None and member is None:
            member = self.state.member(author)
        msg = self.state.message(channel["id"], author, content, guild_id=gid, member=member, mentions=list(mentions), reference=reply_to)
        await self.gateway.dispatch("MESSAGE_CREATE", {**msg, **({"member": msg["member"]} if "member" in msg else {})}, guild_id=gid)
        return msg

    def attach(self, filename: str, data: bytes) -> tuple[dict, dict]:
        """A file a user uploads with a slash command: (the command option, the `resolved` payload)."""
        aid = str(self.state.snowflake())
        self.state.files[aid] = data
        url = f"{self.root}/attachments/{aid}/{filename}"
        payload = {"id": aid, "filename": filename, "size": len(data), "url": url, "proxy_url": url}
        return {"name": "card", "type": 11, "value": aid}, {"attachments": {aid: payload}}

    async def slash(self, name: str, *, channel: dict, user: dict, guild: dict | None = None, options: list[dict] = (),
                    permissions: int = (1 << 31) | (1 << 11), member_roles: tuple[str, ...] = (), resolved: dict | None = None) -> dict:
        """A user runs /name: INTERACTION_CREATE with an application-command payload."""
        token = f"itoken-{self.state.snowflake()}"
        iid = self.state.snowflake()
        cmd = next((c for c in self.state.commands if c["name"] == name), {"id": str(self.state.snowflake())})
        data = {
            "id": str(iid), "application_id": str(self.state.app_id), "type": 2, "token": token, "version": 1,
            "data": {"id": cmd["id"], "name": name, "type": 1, "options": list(options), **({"resolved": resolved} if resolved else {})},
            "channel_id": channel["id"], "channel": channel, "locale": "en-US", "entitlements": [],
            "app_permissions": str((1 << 11) | (1 << 10)), "authorizing_integration_owners": {"0": channel.get("guild_id", "0")},
            "context": 0 if guild else 1, "attachment_size_limit": 8388608,
        }
        if guild is not None:
            data["guild_id"] = guild["id"]
            data["guild_locale"] = "en-US"
            data["member"] = {**self.state.member(user, member_roles), "permissions": str(permissions)}
        else:
            data["user"] = user
        self.state.interactions[token] = data
        await self.gateway.dispatch("INTERACTION_CREATE", data, guild_id=guild["id"] if guild else None)
        return data

    # --- REST ------------------------------------------------------------------------------------
    @web.middleware
    async def _record(self, request: web.Request, handler):
        if not request.path.startswith(API):
            return await handler(request)
        path = request.path[len(API):]
        body = None
        if request.can_read_body:
            raw = await request.read()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = {"_raw": raw.decode(errors="replace")}
        call = Call(request.method, path, dict(request.query), body)
        self.state.calls.append(call)
        if request.headers.get("Authorization") != f"Bot {self.state.token}" and "/interactions/" not in path and "/webhooks/" not in path:
            call.status = 401
            return _json({"message": "401: Unauthorized", "code": 0}, 401)
        retry_after = self.state.take_rate_limit(request.method, path)
        if retry_after is not None:
            call.status = 429
            return _json(
                {"message": "You are being rate limited.", "retry_after": retry_after, "global": False},
                429,
                {"Via": "1.1 google", "X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "0",
                 "X-RateLimit-Reset-After": str(retry_after), "X-RateLimit-Bucket": "fakebucket", "X-RateLimit-Scope": "user"},
            )
        refusal = self.state.take_refusal(request.method, path)
        if refusal is not None:
            call.status, code, message = refusal
            return _json({"message": message, "code": code}, call.status)
        try:
            response = await handler(request)
        except web.HTTPNotFound:
            response = _json({"message": "404: Not Found", "code": 0}, 404)
        call.status = response.status
        return response

    async def _me(self, request):
        return _json(self.state.bot_user)

    async def _app_info(self, request):
        s = self.state
        flags = APP_FLAG_MESSAGE_CONTENT if s.message_content_enabled else 0
        return _json({"id": str(s.app_id), "name": "Orla", "icon": None, "description": "", "bot_public": True,
                      "bot_require_code_grant": False, "owner": s.owner, "verify_key": "00" * 32, "flags": flags,
                      "team": None, "summary": "", "rpc_origins": [], "interactions_endpoint_url": None, "bot": s.bot_user})

    async def _gateway_url(self, request):
        return _json({"url": self.gateway_url})

    async def _gateway_bot(self, request):
        return _json({"url": self.gateway_url, "shards": self.state.shards,
                      "session_start_limit": {"total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1}})

    async def _get_commands(self, request):
        return _json(self.state.commands)

    async def _typing(self, request):
        return web.Response(status=204)

    async def _put_commands(self, request):
        body = await request.json()
        self.state.commands = [{**c, "id": str(self.state.snowflake()), "application_id": str(self.state.app_id), "version": "1", "default_member_permissions": c.get("default_member_permissions")} for c in body]
        return _json(self.state.commands)

    def _bot_message(self, channel_id: str, body: dict) -> dict:
        s = self.state
        reference = None
        ref = body.get("message_reference")
        if ref:
            reference = s.messages.get(int(ref["message_id"]))
        guild_id = s.guild_of_channel(channel_id)
        msg = s.message(channel_id, s.bot_user, body.get("content") or "", guild_id=guild_id, reference=reference)
        return msg

    async def _create_message(self, request):
        body = await request.json()
        content = body.get("content") or ""
        if len(content) > 2000:
            return _json({"message": "Invalid Form Body", "code": 50035, "errors": {"content": {"_errors": [{"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 2000 or fewer in length."}]}}}, 400)
        if not content.strip() and not body.get("embeds"):
            return _json({"message": "Cannot send an empty message", "code": 50006}, 400)
        msg = self._bot_message(request.match_info["cid"], body)
        await self.gateway.dispatch("MESSAGE_CREATE", msg, guild_id=msg.get("guild_id"))
        return _json(msg)

    async def _edit_message(self, request):
        body = await request.json()
        msg = self.state.messages.get(int(request.match_info["mid"]))
        if msg is None:
            return _json({"message": "Unknown Message", "code": 10008}, 404)
        if len(body.get("content") or "") > 2000:
            return _json({"message": "Invalid Form Body", "code": 50035}, 400)
        msg.update(content=body.get("content", msg["content"]), edited_timestamp=msg["timestamp"])
        return _json(msg)

    async def _get_message(self, request):
        msg = self.state.messages.get(int(request.match_info["mid"]))
        return _json(msg) if msg else _json({"message": "Unknown Message", "code": 10008}, 404)

    async def _interaction_callback(self, request):
        body = await request.json()
        token = request.match_info["token"]
        interaction = self.state.interactions.get(token)
        if interaction is None or interaction["id"] != request.match_info["iid"]:
            return _json({"message": "Unknown interaction", "code": 10062}, 404)
        kind = body.get("type")
        data = body.get("data") or {}
        msg = self.state.message(interaction["channel_id"], self.state.bot_user, data.get("content") or "", flags=data.get("flags", 0))
        interaction["response"] = {"type": kind, "message": msg}
        if request.query.get("with_response") not in ("1", "true"):
            return web.Response(status=204)
        return _json({
            "interaction": {"id": interaction["id"], "type": 2, "response_message_id": msg["id"],
                            "response_message_loading": kind == 5, "response_message_ephemeral": bool(data.get("flags", 0) & 64)},
            "resource": {"type": kind, "message": msg},
        })

    async def _edit_original(self, request):
        body = await request.json()
        interaction = self.state.interactions.get(request.match_info["token"])
        if interaction is None or "response" not in interaction:
            return _json({"message": "Unknown Webhook", "code": 10015}, 404)
        msg = interaction["response"]["message"]
        msg["content"] = body.get("content", msg["content"])
        return _json(msg)

    async def _attachment(self, request):
        data = self.state.files.get(request.match_info["aid"])
        return web.Response(body=data) if data is not None else web.Response(status=404)

    async def _followup(self, request):
        interaction = self.state.interactions.get(request.match_info["token"])
        if interaction is None:  # not an interaction's token: a channel webhook's
            return await self.webhooks.execute(request)
        body = await request.json()
        msg = self.state.message(interaction["channel_id"], self.state.bot_user, body.get("content") or "")
        interaction.setdefault("followups", []).append(msg)
        return _json(msg)
