"""The fake gateway: HELLO, IDENTIFY → READY + GUILD_CREATE, heartbeats, RESUME with replay, and the
message-content intent enforced the way Discord does it (4014 when requested but not enabled; otherwise
content blanked unless the bot is mentioned or it is a DM)."""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
import zlib
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

from .state import MESSAGE_CONTENT, FakeState

try:
    import zstandard
except ImportError:  # zstd-stream is offered only when the library is there
    zstandard = None

HEARTBEAT_MS = 41250


class _Compressor:
    def __init__(self, kind: str | None):
        self.kind = kind
        if kind == "zlib-stream":
            self._z = zlib.compressobj()
        elif kind == "zstd-stream":
            if zstandard is None:
                raise ValueError("zstd-stream needs the zstandard package")
            self._z = zstandard.ZstdCompressor().compressobj()

    def pack(self, payload: dict) -> bytes | str:
        data = json.dumps(payload)
        if self.kind == "zlib-stream":
            return self._z.compress(data.encode()) + self._z.flush(zlib.Z_SYNC_FLUSH)
        if self.kind == "zstd-stream":
            return self._z.compress(data.encode()) + self._z.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        return data


@dataclass
class Session:
    id: str
    shard: tuple[int, int]
    intents: int
    seq: int = 0
    log: list[dict] = field(default_factory=list)
    ws: web.WebSocketResponse | None = None
    compressor: _Compressor | None = None
    resumed: int = 0
    identified_with: dict = field(default_factory=dict)

    def shard_for(self, guild_id: int | None) -> bool:
        shard_id, count = self.shard
        return guild_id is None and shard_id == 0 or guild_id is not None and (guild_id >> 22) % count == shard_id


class Gateway:
    def __init__(self, state: FakeState):
        self.state = state
        self.sessions: dict[str, Session] = {}
        self.identifies = 0
        self.resumes = 0
        self.resumes_done = 0  # RESUMED sent: the missed events went out before it, and before anything newer
        self.closes: list[int] = []  # close codes the fake sent
        self.ready = asyncio.Event()
        self.compressions: list[str | None] = []
        self.url = ""  # set by the server once it is listening

    # --- sending ---------------------------------------------------------------------------------
    async def _send(self, ws: web.WebSocketResponse, comp: _Compressor, payload: dict) -> None:
        packed = comp.pack(payload)
        if isinstance(packed, bytes):
            await ws.send_bytes(packed)
        else:
            await ws.send_str(packed)

    async def _dispatch_to(self, session: Session, event: str, data: dict) -> None:
        session.seq += 1
        payload = {"op": 0, "t": event, "s": session.seq, "d": data}
        session.log.append(payload)
        if session.ws is not None and not session.ws.closed:
            try:
                await self._send(session.ws, session.compressor, payload)
            except ConnectionError:
                pass  # kept in the log; a RESUME replays it

    def _visible(self, session: Session, event: str, data: dict) -> dict:
        if event != "MESSAGE_CREATE" or session.intents & MESSAGE_CONTENT:
            return data
        bot_id = self.state.bot_user["id"]
        mentioned = any(u["id"] == bot_id for u in data.get("mentions", []))
        if mentioned or "guild_id" not in data or data["author"]["id"] == bot_id:
            return data
        blanked = copy.deepcopy(data)
        blanked.update(content="", embeds=[], attachments=[], components=[])
        return blanked

    async def dispatch(self, event: str, data: dict, *, guild_id: int | str | None = None) -> int:
        """Send an event to every live or resumable session whose shard owns `guild_id`; returns how many."""
        gid = int(guild_id) if guild_id is not None else None
        n = 0
        for session in list(self.sessions.values()):
            if session.shard_for(gid):
                await self._dispatch_to(session, event, self._visible(session, event, data))
                n += 1
        return n

    async def drop(self, code: int = 4000) -> None:
        """Close every live socket the way a Discord edge restart does; sessions stay resumable."""
        for session in self.sessions.values():
            if session.ws is not None and not session.ws.closed:
                ws, session.ws = session.ws, None
                self.closes.append(code)
                await ws.close(code=code)

    async def request_reconnect(self) -> None:
        """Opcode 7: ask clients to reconnect and resume."""
        for session in self.sessions.values():
            if session.ws is not None and not session.ws.closed:
                await self._send(session.ws, session.compressor, {"op": 7, "d": None})

    # --- the socket ------------------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        try:
            comp = _Compressor(request.query.get("compress"))
        except ValueError:
            await ws.close(code=4000)
            return ws
        self.compressions.append(comp.kind)
        await self._send(ws, comp, {"op": 10, "s": None, "t": None, "d": {"heartbeat_interval": HEARTBEAT_MS}})
        session: Session | None = None
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            payload = json.loads(msg.data)
            op, d = payload.get("op"), payload.get("d")
            if op == 1:
                await self._send(ws, comp, {"op": 11, "s": None, "t": None, "d": None})
            elif op == 2:
                session = await self._identify(ws, comp, d)
                if session is None:
                    return ws
            elif op == 6:
                session = await self._resume(ws, comp, d)
            # presence updates (3), member requests (8) and the rest need no answer here
        if session is not None and session.ws is ws:
            session.ws = None
            if ws.close_code in (1000, 1001):  # a clean client close ends the session, as on Discord
                self.sessions.pop(session.id, None)
        return ws

    async def _identify(self, ws, comp, d: dict) -> Session | None:
        self.identifies += 1
        if d.get("token") != self.state.token:
            self.closes.append(4004)
            await ws.close(code=4004, message=b"Authentication failed.")
            return None
        intents = int(d.get("intents", 0))
        if intents & MESSAGE_CONTENT and not self.state.message_content_enabled:
            self.closes.append(4014)
            await ws.close(code=4014, message=b"Disallowed intent(s).")
            return None
        shard = tuple(d.get("shard") or (0, 1))
        if shard[1] != self.state.shards and not (shard[1] == 1 and self.state.shards == 1):
            pass  # Discord would answer 4011 when too few shards; tests choose shard counts freely
        session = Session(uuid.uuid4().hex, (int(shard[0]), int(shard[1])), intents, ws=ws, compressor=comp, identified_with=d)
        self.sessions[session.id] = session
        guilds = [g for g in self.state.guilds.values() if session.shard_for(int(g["id"]))]
        await self._dispatch_to(session, "READY", {
            "v": 10, "user": self.state.bot_user, "guilds": [{"id": g["id"], "unavailable": True} for g in guilds],
            "session_id": session.id, "resume_gateway_url": self.url, "shard": list(session.shard),
            "application": {"id": str(self.state.app_id), "flags": 1 << 19 if self.state.message_content_enabled else 0},
            "private_channels": [], "relationships": [], "presences": [], "guild_join_requests": [], "user_settings": {},
        })
        for guild in guilds:
            await self._dispatch_to(session, "GUILD_CREATE", guild)
        self.ready.set()
        return session

    async def _resume(self, ws, comp, d: dict) -> Session | None:
        session = self.sessions.get(d.get("session_id", ""))
        if session is None or d.get("token") != self.state.token:
            await self._send(ws, comp, {"op": 9, "d": False})
            return None
        self.resumes += 1
        session.resumed += 1
        session.ws, session.compressor = ws, comp
        missed = [p for p in session.log if p["s"] > int(d.get("seq") or 0)]
        for payload in missed:
            await self._send(ws, comp, payload)
        await self._dispatch_to(session, "RESUMED", {})
        self.resumes_done += 1
        return session
