import asyncio

from conftest import ScriptedBackend

from charbot.backends.base import cache_key
from charbot.engine import Engine
from charbot.memory_sqlite import SqliteStore
from charbot.persona import CharacterCard


def make(backend, store, card, **kw):
    return Engine(backend, store, card, **kw)


async def test_reply_is_cleaned_and_remembered(scripted, store, sample_card):
    scripted.replies = ["Orla: Kettle's on, sprat.\nUser: thanks"]
    engine = make(scripted, store, sample_card)
    reply = await engine.reply("c", "Hello")
    assert reply.text == "Kettle's on, sprat." and reply.persona == "Orla" and not reply.fallback
    assert [(t.role, t.content) for t in await store.history("c")] == [("user", "Hello"), ("assistant", "Kettle's on, sprat.")]
    # stop strings name both sides so the model cannot write the user's next line
    assert "\nUser:" in scripted.settings[-1].stop and "\nOrla:" in scripted.settings[-1].stop


async def test_conversation_survives_restart(tmp_path, sample_card):
    path = tmp_path / "memory.db"
    first = ScriptedBackend(["Aye, I remember the storm of '09."])
    engine = make(first, SqliteStore(path), sample_card)
    await engine.reply("chan", "Tell me about the big storm", speaker="Sam")
    await engine.store.close()

    # a new process: new store object on the same file, new backend
    second = ScriptedBackend(["It took the pier."])
    engine = make(second, SqliteStore(path), sample_card)
    await engine.reply("chan", "What did it break?", speaker="Sam")
    contents = [m.content for m in second.prompts[0].messages]
    assert "Sam: Tell me about the big storm" in contents
    assert "Orla: Aye, I remember the storm of '09." in contents  # speakers named, so the character is too
    assert contents[-1] == "Sam: What did it break?"
    await engine.store.close()


async def test_never_empty_never_echo(store, sample_card):
    backend = ScriptedBackend(["", "Hello there", "   "])
    engine = make(backend, store, sample_card, fallback_reply="*Orla sips her tea.*")
    reply = await engine.reply("c", "Hello there")
    assert reply.fallback and reply.text == "*Orla sips her tea.*"
    assert backend.calls == 3  # first try plus two retries

    backend = ScriptedBackend(["hello there!", "Ahoy yourself."])
    engine = make(backend, store, sample_card)
    reply = await engine.reply("d", "Hello there")
    assert reply.text == "Ahoy yourself." and not reply.fallback


async def test_truncated_reply_ends_at_a_sentence(store, sample_card):
    backend = ScriptedBackend(["Batten down the hatches, sprat. The gulls have gone very qu"])
    engine = make(backend, store, sample_card)
    engine.settings = engine.settings.__class__(max_new_tokens=8)
    reply = await engine.reply("c", "Storm?")
    assert reply.text == "Batten down the hatches, sprat."


async def test_turns_of_one_conversation_stay_in_order(store, sample_card):
    backend = ScriptedBackend(respond=lambda p: "re: " + p.messages[-1].content, delay=0.01)
    engine = make(backend, store, sample_card)
    await asyncio.gather(*(engine.reply("c", f"message {i}") for i in range(6)))
    history = await store.history("c")
    assert [t.content for t in history if t.role == "user"] == [f"message {i}" for i in range(6)]
    # each reply was generated with all earlier exchanges in the prompt
    assert [len(p.messages) for p in backend.prompts] == [3, 5, 7, 9, 11, 13]  # system, greeting, turns


async def test_streaming_updates_are_growing_snapshots(store, sample_card):
    backend = ScriptedBackend(["Mind the ninth step, it bites."])
    engine = make(backend, store, sample_card)
    seen = []
    reply = await engine.reply("c", "Hi", on_update=seen.append)
    assert seen and seen[-1] == reply.text == "Mind the ninth step, it bites."
    assert all(b.startswith(a) for a, b in zip(seen, seen[1:]))


async def test_reset_and_persona_switch(store, sample_card):
    bob = CharacterCard.model_validate({"data": {"name": "Bob", "description": "A baker."}})
    backend = ScriptedBackend(["Bread."])
    engine = make(backend, store, sample_card, personas={"Bob": bob})
    await engine.reply("c", "hi")
    assert await engine.reset("c") == 2
    await engine.set_persona("c", "bob")
    reply = await engine.reply("c", "who are you?")
    assert reply.persona == "Bob"
    assert "You are Bob" in backend.prompts[-1].messages[0].content
    assert (await engine.persona_for("other")).name == "Orla"


async def test_dialogpt_prompts_join_turns_with_eos(store, sample_card):
    backend = ScriptedBackend(["Hey.", "Sure."])
    engine = make(backend, store, sample_card, prompt_format="dialogpt")
    await engine.reply("c", "hi")
    await engine.reply("c", "ok?")
    assert backend.prompts[-1].text == "hi<eos>Hey.<eos>ok?<eos>"


async def test_warm_up_loads_and_generates_once(store, sample_card):
    backend = ScriptedBackend(["x"])
    engine = make(backend, store, sample_card)
    await engine.warm_up()
    assert backend.ready and backend.calls == 1
    assert await store.count_messages() == 0  # the warm-up is not a conversation


async def test_ask_is_one_off(store, sample_card):
    backend = ScriptedBackend(["Aye.", "Tea, always."])
    engine = make(backend, store, sample_card)
    await engine.reply("c", "hello")
    reply = await engine.ask("Do you like tea?", speaker="Sam")
    assert reply.text == "Tea, always."
    assert [m.content for m in backend.prompts[-1].messages[-1:]] == ["Sam: Do you like tea?"]
    assert len(backend.prompts[-1].messages) == 3  # system, greeting, the question: no history
    assert await store.count_messages() == 2  # only the first exchange is remembered


async def test_ask_takes_the_callers_history_and_sampling_and_remembers_nothing(store, sample_card):
    from charbot.generation import GenerationSettings
    from charbot.memory import Turn

    backend = ScriptedBackend(["Aye, the same storm."])
    engine = Engine(backend, store, sample_card)
    history = [Turn("user", "Remember the storm of ninety-one?", "Pip"), Turn("assistant", "How could I forget.", "Orla")]
    reply = await engine.ask("Was it worse than this one?", speaker="Pip", history=history,
                             settings=GenerationSettings(max_new_tokens=7, temperature=0.2))
    assert reply.text == "Aye, the same storm." and reply.turns_in_prompt == 2
    shown = [m.content for m in backend.prompts[-1].messages]
    assert "Pip: Remember the storm of ninety-one?" in shown and shown[-1] == "Pip: Was it worse than this one?"
    assert (backend.settings[-1].max_new_tokens, backend.settings[-1].temperature) == (7, 0.2)
    assert await store.count_conversations() == 0  # nothing remembered


async def test_reply_takes_per_call_sampling_and_leaves_room_for_its_tokens(store, sample_card):
    from charbot.generation import GenerationSettings
    from charbot.memory import Turn

    backend = ScriptedBackend(["Aye."], context_window=400)
    engine = Engine(backend, store, sample_card)
    for i in range(30):
        await store.add_exchange("c", [Turn("user", f"question number {i} about the lamp"), Turn("assistant", "the lamp burns all night", "Orla")])
    short = await engine.reply("c", "hi", settings=GenerationSettings(max_new_tokens=8))
    long = await engine.reply("c", "hi", settings=GenerationSettings(max_new_tokens=200, temperature=0.1))
    assert (backend.settings[-1].max_new_tokens, backend.settings[-1].temperature) == (200, 0.1)
    # a longer reply gets its room: fewer remembered turns fit, and the prompt leaves 200 tokens (+16 slack) free
    assert long.turns_in_prompt < short.turns_in_prompt
    assert short.prompt_tokens > 400 - 200 and long.prompt_tokens <= 400 - 200 - 16


def _card(name: str) -> CharacterCard:
    return CharacterCard.model_validate({"data": {"name": name, "description": f"{name} of the test cast."}})


async def test_a_scene_turn_answers_the_last_line_and_other_characters_are_named_speakers(store):
    """One transcript, several characters: each sees the others' lines as theirs, not its own."""
    rick, morty = _card("Rick"), _card("Morty")
    backend = ScriptedBackend(["Morty, the portal gun.", "Aw jeez, okay."])
    engine = make(backend, store, rick, personas={"Morty": morty})
    await engine.reply("c", "What now?", speaker="Sam", persona=rick)
    reply = await engine.follow_up("c", morty)
    assert reply.persona == "Morty" and reply.text == "Aw jeez, okay."
    seen = [(m.role, m.content) for m in backend.prompts[-1].messages[1:]]
    assert seen == [("user", "Sam: What now?\nRick: Morty, the portal gun.")]
    assert backend.prompts[-1].reply_prefix == "Morty:"
    assert "\nRick:" in backend.settings[-1].stop and "\nMorty:" in backend.settings[-1].stop
    # only the character's line is remembered: there was no new message from a person
    assert [(t.role, t.speaker) for t in await store.history("c")] == [("user", "Sam"), ("assistant", "Rick"), ("assistant", "Morty")]
    # each character of the scene keeps its own prompt-cache state of the conversation
    assert [p.cache_key for p in backend.prompts] == [cache_key("c", "Rick"), cache_key("c", "Morty")]
    assert await engine.follow_up("c", rick, wanted=lambda: False) is None  # a person spoke meanwhile: stale
    assert await engine.follow_up("empty", rick) is None and backend.calls == 2


async def test_a_character_with_a_model_of_its_own_is_served_by_it_in_the_shared_transcript(store):
    """discord_character_models: Morty's turns go to his model (its own window and prompt format), Rick's to the
    bot's; both read one transcript, /reset forgets the conversation on both, warm-up loads both."""
    rick, morty = _card("Rick"), _card("Morty")
    shared, own = ScriptedBackend(["Morty, the portal gun."]), ScriptedBackend(["Aw jeez, okay."], context_window=512)
    own.eos_token = "</s>"
    engine = make(shared, store, rick, personas={"Morty": morty}, character_backends={"Morty": own})
    assert engine.backends == [shared, own]
    await engine.warm_up()
    assert shared.ready and own.ready
    await engine.reply("c", "What now?", speaker="Sam", persona=rick)
    reply = await engine.follow_up("c", morty)
    assert reply.text == "Aw jeez, okay." and own.calls == 2 and shared.calls == 2  # warm-up + one turn each
    assert speaker_in(own.prompts[-1]) == "Morty" and speaker_in(shared.prompts[-1]) == "Rick"
    assert [(m.role, m.content) for m in own.prompts[-1].messages[1:]] == [("user", "Sam: What now?\nRick: Morty, the portal gun.")]
    forgotten = []
    for backend in (shared, own):
        backend.forget = forgotten.append
    await engine.reset("c")
    assert forgotten == ["c", "c"]


def speaker_in(prompt) -> str:
    return prompt.messages[0].content.split(".")[0].removeprefix("You are ")
