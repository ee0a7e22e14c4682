"""Who/when to answer, message splitting and load limits, as plain functions (no Discord)."""

from __future__ import annotations


import pytest
from hypothesis import given, settings, strategies as st

from charbot.discord.limits import Cooldown
from charbot.discord.policy import MessageFacts, Rules, conversation_id, should_answer, strip_mention
from charbot.discord.split import split_message

GUILD, CHAN, CHAT, USER, ROLE = 10, 20, 30, 40, 50


def facts(**kw) -> MessageFacts:
    return MessageFacts(**{"author_id": USER, "channel_id": CHAN, "guild_id": GUILD, **kw})


@pytest.mark.parametrize(
    ("message", "rules", "answer", "reason"),
    [
        (facts(mentions_bot=True), Rules(), True, "mentioned"),
        (facts(replies_to_bot=True), Rules(), True, "reply to bot"),
        (facts(), Rules(), False, "not addressed"),
        (facts(channel_id=CHAT), Rules(chat_channels=frozenset({CHAT})), True, "chat channel"),
        (facts(channel_id=99, parent_channel_id=CHAT), Rules(chat_channels=frozenset({CHAT})), True, "chat channel"),  # thread
        (facts(guild_id=None), Rules(), True, "dm"),
        (facts(guild_id=None), Rules(allow_dms=False), False, "dms disabled"),
        (facts(mentions_bot=True, author_is_bot=True), Rules(), False, "author is a bot"),
        (facts(mentions_bot=True, is_self=True), Rules(), False, "own message"),
        (facts(mentions_bot=True), Rules(blocked_users=frozenset({USER})), False, "user blocked"),
        (facts(mentions_bot=True), Rules(allowed_users=frozenset({1})), False, "user not in allow list"),
        (facts(mentions_bot=True), Rules(blocked_channels=frozenset({CHAN})), False, "channel blocked"),
        (facts(mentions_bot=True), Rules(allowed_channels=frozenset({CHAT})), False, "channel not in allow list"),
        (facts(mentions_bot=True), Rules(blocked_guilds=frozenset({GUILD})), False, "server blocked"),
        (facts(mentions_bot=True), Rules(allowed_guilds=frozenset({1})), False, "server not in allow list"),
        (facts(mentions_bot=True, role_ids=frozenset({ROLE})), Rules(blocked_roles=frozenset({ROLE})), False, "role blocked"),
        (facts(mentions_bot=True), Rules(allowed_roles=frozenset({ROLE})), False, "no allowed role"),
        (facts(mentions_bot=True, role_ids=frozenset({ROLE})), Rules(allowed_roles=frozenset({ROLE})), True, "mentioned"),
        (facts(mentions_bot=True), Rules(allowed_users=frozenset({USER}), blocked_users=frozenset({USER})), False, "user blocked"),
    ],
)
def test_should_answer(message, rules, answer, reason):
    decision = should_answer(message, rules)
    assert (decision.answer, decision.reason) == (answer, reason)


def test_rules_from_settings(isolated_env, monkeypatch):
    from charbot.config import load_settings

    monkeypatch.setenv("CHARBOT_DISCORD_CHAT_CHANNELS", "[30, 31]")
    rules = Rules.from_settings(load_settings(discord_blocked_users=[7], discord_allow_dms=False).discord)
    assert rules.chat_channels == {30, 31} and rules.blocked_users == {7} and rules.allow_dms is False


def test_strip_mention_and_conversation_id():
    assert strip_mention("<@123> hi  <@!123> there <@456>", 123) == "hi there <@456>"
    assert conversation_id(5) == "discord:5"


@pytest.mark.parametrize("text", ["", "   ", "short."])
def test_split_short(text):
    assert split_message(text) == ([text.strip()] if text.strip() else [])


def test_split_prefers_sentence_ends_then_words_then_hard_cuts():
    text = "One two three. Four five six seven eight."
    assert split_message(text, 20) == ["One two three.", "Four five six seven", "eight."]
    assert split_message("x" * 45, 20) == ["x" * 20, "x" * 20, "x" * 5]


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab .!?\n")), max_size=400), st.integers(min_value=5, max_value=60))
def test_split_chunks_fit_and_keep_every_word(text, limit):
    chunks = split_message(text, limit)
    assert all(0 < len(c) <= limit for c in chunks)
    assert all(c == c.strip() for c in chunks)
    assert "".join("".join(chunks).split()) == "".join(text.split())


def test_cooldown_is_per_user():
    now = [100.0]
    cooldown = Cooldown(2.0, clock=lambda: now[0])
    assert cooldown.retry_after(1) == 0 and cooldown.retry_after(2) == 0
    now[0] += 0.5
    assert cooldown.retry_after(1) == pytest.approx(1.5)
    now[0] += 1.6
    assert cooldown.retry_after(1) == 0


def test_invite_permissions_match_the_docs():
    from pathlib import Path

    from charbot.discord.invite import invite_url, needed_permissions

    perms = needed_permissions()
    assert perms.value == 277025459200
    assert not (perms.administrator or perms.mention_everyone or perms.manage_messages)
    docs = (Path(__file__).parents[1] / "docs" / "discord.md").read_text(encoding="utf-8")
    assert str(perms.value) in docs and "bot applications.commands" in docs
    assert invite_url(42).endswith("client_id=42&scope=bot+applications.commands&permissions=277025459200")
