"""PostgreSQL memory under faults, against the real server the session starts (tests/pg_server.py): a wrong
memory_url is one line naming the setting; the server stopped during a burst of messages costs no answer, no
acknowledged turn and no duplicate, and the bot recovers by itself. The password shows up nowhere."""

from __future__ import annotations

import asyncio
import json
import logging

import aiohttp
import pytest

from charbot.config import load_settings
from charbot.errors import CharbotError, ConfigError
from charbot.memory import MemoryStoreError, create_store
from conftest import ScriptedBackend
from fakediscord import FakeDiscord
from fakediscord.harness import running_bot
from pg_server import free_port

PASSWORD = "s3cret-Pa55"  # what pg_url's role is made with (PostgresServer.new_database)


def one_line_naming_the_setting(exc: BaseException, *, says: str) -> None:
    text = str(exc)
    assert isinstance(exc, CharbotError) and "\n" not in text and says in text, text
    assert "memory_url" in text and PASSWORD not in text and "***" in text, text


async def failed_open(url: str) -> BaseException:
    store = create_store(url, timeout=1)
    with pytest.raises(ConfigError) as caught:
        await store.open()
    await store.close()
    return caught.value


def test_wrong_scheme_is_refused_with_the_settings_error():
    with pytest.raises(ConfigError) as caught:
        load_settings(memory_url=f"mysql://charbot:{PASSWORD}@127.0.0.1/charbot")
    one_line_naming_the_setting(caught.value, says="unknown scheme mysql://")


async def test_unreachable_host_bad_password_and_no_create_permission_are_one_line_errors(postgres, pg_url, caplog):
    caplog.set_level(logging.DEBUG)
    unreachable = f"postgresql://charbot:{PASSWORD}@127.0.0.1:{free_port()}/charbot"
    one_line_naming_the_setting(await failed_open(unreachable), says="cannot reach the server")
    one_line_naming_the_setting(await failed_open(pg_url.replace(PASSWORD, PASSWORD + "x")), says="refused the user or password")
    one_line_naming_the_setting(await failed_open(pg_url.rsplit("/", 1)[0] + "/no_such_db"), says="no such database")
    # a role that may connect but not create tables (PostgreSQL 15: nobody but the owner creates in public)
    postgres.admin("CREATE ROLE reader LOGIN PASSWORD %s" % f"'{PASSWORD}'")
    postgres.admin("CREATE DATABASE locked OWNER postgres")
    one_line_naming_the_setting(await failed_open(postgres.url("reader", PASSWORD, "locked")), says="cannot create charbot's tables")
    assert PASSWORD not in caplog.text


def test_the_cli_prints_the_memory_url_error_in_one_line_without_the_password(postgres, isolated_env, capsys):
    from charbot.cli import main

    url = f"postgresql://charbot:{PASSWORD}@127.0.0.1:{free_port()}/charbot"
    with pytest.raises(SystemExit) as exited:
        main(["chat", "--memory-url", url])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.count("\n") == 1 and err.startswith("charbot: error: memory_url postgresql://charbot:***@")
    assert PASSWORD not in err and "Traceback" not in err


async def _healthz(port: int) -> dict:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
            return json.loads(await response.text())


async def _stored_user_turns(url: str) -> list[tuple[str, int]]:
    """(text, how many times stored) of every user turn, read through a store of its own."""
    store = create_store(url)
    try:
        async def turns():
            out = []
            for cid, *_ in await store.dump_conversations():
                out += [t.content for t in await store.history(cid, 10_000) if t.role == "user"]
            return out
        texts = await turns()
    finally:
        await store.close()
    return [(t, texts.count(t)) for t in sorted(set(texts))]


async def test_postgres_stopped_during_a_burst(postgres, pg_url, isolated_env, caplog):
    """Four replies are being generated when the server stops: they are delivered, their writes retried until
    it is back, and stored once. Four messages arriving while it is down get the short error at once (nothing
    is generated or stored for them). Then everything answers again, with nobody restarting anything."""
    caplog.set_level(logging.INFO)
    backend = ScriptedBackend(["Aye."], parallel=4)
    async with FakeDiscord() as fake:
        guild = fake.state.add_guild(channels=tuple(f"c{n}" for n in range(8)))
        user = fake.state.user("marek")
        channels = [fake.state.channel(guild, f"c{n}") for n in range(8)]
        async with running_bot(fake, backend, isolated_env / "unused.db", health=True, memory_url=pg_url, memory_timeout=1,
                               discord_max_inflight=4) as bot:
            mention = f"<@{bot.user.id}>"
            backend.release = asyncio.Event()  # generations wait for it from now on (the warm-up did not)
            await fake.wait_for(lambda: bot.health_port)
            before = await _healthz(bot.health_port)
            assert before["memory"] == "ok" and before["memory_store"] == pg_url.replace(PASSWORD, "***")

            async def say(channel, text):
                await fake.say(channel, user, f"{mention} {text}", guild=guild, mentions=[fake.state.bot_user])

            def replies(channel) -> list[str]:
                return [c.json["content"] for c in fake.state.calls_to("POST", f"/channels/{channel['id']}/messages")]

            for n, ch in enumerate(channels[:4]):
                await say(ch, f"before {n}")
            await fake.wait_for(lambda: backend.running == 4)  # each has read its history and is generating
            await asyncio.to_thread(postgres.stop)
            try:
                backend.release.set()
                await fake.wait_for(lambda: all(replies(ch) == ["Aye."] for ch in channels[:4]))  # delivered, writes retrying
                for n, ch in enumerate(channels[4:]):
                    await say(ch, f"during {n}")
                await fake.wait_for(lambda: all(replies(ch) == [MemoryStoreError.user_message] for ch in channels[4:]))
                down = await _healthz(bot.health_port)
                assert down["memory"].startswith("error: memory database postgresql://charbot:***@") and "unavailable" in down["memory"]
                assert PASSWORD not in json.dumps(down)
            finally:
                await asyncio.to_thread(postgres.start)
            # nobody intervenes: the retried writes land, and new messages are answered
            await fake.wait_for(lambda: bot.engine.memory_status == "ok", timeout=20)
            for n, ch in enumerate(channels):
                await say(ch, f"after {n}")
            await fake.wait_for(lambda: all(replies(ch)[-1:] == ["Aye."] and len(replies(ch)) == 2 for ch in channels))

            async def all_remembered() -> bool:
                return await bot.engine.store.count_messages() == 2 * 12

            await fake.wait_for(all_remembered)
            assert (await _healthz(bot.health_port))["memory"] == "ok"
    stored = dict(await _stored_user_turns(pg_url))
    # every answered turn (the four whose write waited for the server included), none of the refused ones
    assert set(stored) == {f"before {n}" for n in range(4)} | {f"after {n}" for n in range(8)}
    assert set(stored.values()) == {1}  # nothing stored twice
    assert "memory unavailable; retrying the write" in caplog.text  # the four writes did wait for the server
    assert PASSWORD not in caplog.text
