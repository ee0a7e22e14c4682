"""The prompt (KV) cache: longest exact prefix, LRU under a byte budget, spill to disk, forget on reset; and on the
real model, a conversation's next turn after others restores its state and gives the tokens it would have given
had nothing come between."""

from __future__ import annotations

import pytest

from charbot.backends.kv_cache import MIN_TOKENS, PromptCache

A = tuple(range(100, 200))
B = tuple(range(100, 150)) + tuple(range(900, 960))  # shares A's first 50 tokens
C = tuple(range(500, 600))


def test_the_longest_exact_prefix_wins_and_the_last_token_is_always_read():
    cache = PromptCache(budget_bytes=10_000)
    cache.put(A, b"a" * 100, "conv-a")
    cache.put(B, b"b" * 100, "conv-b")
    entry, shared = cache.best(A + (7, 8, 9))
    assert entry.tokens == A and shared == len(A)
    entry, shared = cache.best(B[:80] + (1,))
    assert entry.tokens == B and shared == 80
    assert cache.best(A)[1] == len(A) - 1  # the prompt's own last token: read again for its logits
    assert cache.best(C) == (None, 0)
    assert cache.best(A[:10] + (0,) * 40)[1] == 10  # exact tokens only, never a near match


def test_least_recently_used_states_go_first_and_the_budget_holds():
    cache = PromptCache(budget_bytes=250)
    cache.put(A, b"a" * 100, "a")
    cache.put(B, b"b" * 100, "b")
    cache.state(cache.best(A + (1,))[0])  # A used again: B is now the least recent
    cache.put(C, b"c" * 100, "c")
    assert set(cache.entries) == {A, C} and cache.stats.stored_bytes == 200 <= 250
    assert cache.stats.evicted_bytes == 100
    cache.put(tuple(range(MIN_TOKENS - 1)), b"x", None)  # too short to be worth keeping
    assert set(cache.entries) == {A, C}


def test_a_conversation_keeps_one_state_and_a_longer_state_replaces_its_start():
    cache = PromptCache(budget_bytes=10_000)
    cache.put(A, b"a" * 100, "conv-a")
    cache.put(A + (1, 2, 3), b"a" * 103, "conv-a")  # the conversation's next turn
    cache.put(C, b"c" * 100, None)
    cache.put(C + (4,) * 40, b"c" * 140, None)  # extends C: C is no longer needed
    assert set(cache.entries) == {A + (1, 2, 3), C + (4,) * 40} and cache.stats.stored_bytes == 243
    cache.put(B, b"b" * 100, "conv-a")  # the conversation's newest state, even where it parts from the old one
    assert set(cache.entries) == {B, C + (4,) * 40}


def test_forget_drops_a_conversations_states():
    cache = PromptCache(budget_bytes=10_000)
    cache.put(A, b"a" * 10, "conv-a")
    cache.put(C, b"c" * 10, "conv-c")
    assert cache.forget("conv-a") == 1 and set(cache.entries) == {C} and cache.stats.stored_bytes == 10


def test_evicted_states_spill_to_disk_and_are_found_again_for_the_same_model_only(tmp_path):
    cache = PromptCache(budget_bytes=150, spill_dir=tmp_path, spill_budget_bytes=1000, fingerprint="model-1")
    cache.put(A, b"a" * 100, "a")
    cache.put(C, b"c" * 100, "c")  # A goes to disk
    entry, shared = cache.best(A + (1,))
    assert shared == len(A) and entry.data is None and cache.state(entry) == b"a" * 100
    assert cache.stats.spilled_bytes == 100 and cache.stats.stored_bytes == 100
    # a later process with the same model and context finds the spilled state; another model's never
    assert PromptCache(budget_bytes=150, spill_dir=tmp_path, spill_budget_bytes=1000, fingerprint="model-1").best(A + (1,))[1] == len(A)
    assert PromptCache(budget_bytes=150, spill_dir=tmp_path, spill_budget_bytes=1000, fingerprint="model-2").best(A + (1,))[0] is None
    # a torn file (a process killed mid-write) is ignored and removed
    torn = next((tmp_path / "model-1").glob("*.kv"))
    torn.write_bytes(torn.read_bytes()[:12])
    assert PromptCache(budget_bytes=150, spill_dir=tmp_path, spill_budget_bytes=1000, fingerprint="model-1").entries == {}
    assert not torn.exists()


# --- on the real model -----------------------------------------------------------------------------------


@pytest.fixture
def engines(tmp_path, sample_card):
    """Two engines on their own llama.cpp backends (one sequence each, prompt cache on) and their stores."""
    import asyncio

    from charbot.backends.llamacpp import LlamaCppBackend
    from charbot.engine import Engine
    from charbot.generation import GenerationSettings
    from charbot.memory_sqlite import SqliteStore
    from charbot.models import embedded_model_path

    made = []

    def make(name: str, **kw) -> Engine:
        backend = LlamaCppBackend(embedded_model_path(), context_window=1024, threads=2, **kw)
        greedy = GenerationSettings(max_new_tokens=16, do_sample=False, no_repeat_ngram_size=0)
        engine = Engine(backend, SqliteStore(tmp_path / f"{name}.db"), sample_card, greedy)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        asyncio.run(engine.backend.aclose())
        asyncio.run(engine.store.close())


@pytest.mark.model
async def test_a_restored_state_gives_the_tokens_the_kept_one_gives(engines):
    interleaved, alone = engines("interleaved"), engines("alone")
    for engine in (interleaved, alone):
        await engine.warm_up()
        await engine.reply("a", "Hello! Who keeps this light?", speaker="Pip")
    await interleaved.reply("b", "Is the ferry running tonight?", speaker="Ann")  # evicts a's cells into the cache
    before = interleaved.backend.cache_stats()
    restored = await interleaved.reply("a", "And how long have you kept it?", speaker="Pip")
    kept = await alone.reply("a", "And how long have you kept it?", speaker="Pip")
    after = interleaved.backend.cache_stats()
    assert after["hits"] == before["hits"] + 1
    a_prompt = (await interleaved.build_prompt("a", "x", speaker="Pip"))[0]
    assert after["saved_tokens"] - before["saved_tokens"] > 0.8 * interleaved.backend.count_tokens("".join(m.content for m in a_prompt.prompt.messages))
    assert restored.text == kept.text and not restored.fallback  # the same cells, so the same greedy tokens


@pytest.mark.model
async def test_another_personas_state_is_never_used(engines, sample_card):
    from charbot.persona import CardData, CharacterCard

    engine = engines("personas")
    await engine.warm_up()
    await engine.reply("a", "Hello! Who keeps this light?", speaker="Pip")
    await engine.reply("b", "Is the ferry running tonight?", speaker="Ann")
    stranger = CharacterCard(data=CardData(name="Wendeline", description="A ferry pilot who never stops talking about tides."))
    await engine.set_persona("c", stranger)
    before = engine.backend.cache_stats()
    await engine.reply("c", "Hello! Who keeps this light?", speaker="Pip")
    after = engine.backend.cache_stats()
    assert after["hits"] == before["hits"] and after["misses"] == before["misses"] + 1  # nothing of Orla's reused


@pytest.mark.model
async def test_each_character_of_a_conversation_keeps_its_own_state(engines, sample_card):
    # A scene: two characters take turns in one conversation; each keeps a state, neither replaces the other's.
    from charbot.persona import CardData, CharacterCard

    engine = engines("scene")
    other = CharacterCard(data=CardData(name="Wendeline", description="A ferry pilot who never stops talking about tides."))
    await engine.warm_up()
    await engine.reply("a", "Hello! Who keeps this light?", speaker="Pip")
    await engine.set_persona("a", other)
    await engine.reply("a", "And who steers the ferry?", speaker="Pip")  # Orla's cells saved under her own key
    keys = lambda: {e.key for e in engine.backend.worker.cache.entries.values()} - {None}  # noqa: E731  (None: the warm-up)
    assert keys() == {"a\x1fOrla"}
    await engine.set_persona("a", sample_card)
    before = engine.backend.cache_stats()
    back = await engine.reply("a", "Is the storm coming?", speaker="Pip")
    after = engine.backend.cache_stats()
    assert after["hits"] == before["hits"] + 1 and not back.fallback  # Orla's state restored, Wendeline's saved
    assert keys() == {"a\x1fOrla", "a\x1fWendeline"}
    await engine.reset("a")
    await engine.reply("b", "Hello!", speaker="Ann")  # the worker forgets before its next request
    assert not [key for key in keys() if key.startswith("a\x1f")]


@pytest.mark.model
async def test_a_state_evicted_while_its_cells_go_back_is_still_restored(engines):
    import asyncio

    # Room for one state: restoring a's saves b's cells, which evicts a's state. The restore holds a's state
    # already (it once looked it up after: KeyError on the worker thread, and every later reply hung).
    small, alone = engines("small", cache_bytes=10_000_000), engines("alone")  # a state here is ~7 MB
    for engine in (small, alone):
        await engine.warm_up()
        await engine.reply("a", "Hello! Who keeps this light?", speaker="Pip")
    await small.reply("b", "Is the ferry running tonight?", speaker="Ann")
    before = small.backend.cache_stats()
    # bounded: the failure this guards against is a reply that never comes
    restored = await asyncio.wait_for(small.reply("a", "And how long have you kept it?", speaker="Pip"), 120)
    after = small.backend.cache_stats()
    assert after["hits"] == before["hits"] + 1 and after["evicted_bytes"] > before["evicted_bytes"]
    assert restored.text == (await alone.reply("a", "And how long have you kept it?", speaker="Pip")).text
    assert (await asyncio.wait_for(small.reply("b", "And tomorrow?", speaker="Ann"), 120)).text  # the worker is still there


def test_a_failing_admission_fails_its_request_and_the_worker_goes_on():
    import asyncio

    from charbot.backends.base import Completion
    from charbot.backends.worker import ModelWorker
    from charbot.errors import BackendError
    from charbot.generation import GenerationSettings

    class Flaky(ModelWorker):
        def __init__(self):
            super().__init__("flaky")
            self.admitted, self.fail = [], True

        def running(self):
            return len(self.admitted)

        def admit(self):
            while self.waiting:
                req = self.waiting.popleft()
                if self.fail:
                    self.fail = False
                    raise KeyError("a slip in a hook")
                self.admitted.append(req)

        def step(self):
            for req in self.admitted:
                req.emit("ok")
                req.emit(Completion("ok", 1))
            self.admitted.clear()

        def drop_running(self, error):
            for req in self.admitted:
                req.emit(error)
            self.admitted.clear()

    async def main():
        worker = Flaky()
        worker.start()
        try:
            async def ask():
                return [piece async for piece in worker.generate(lambda: [1, 2, 3], GenerationSettings(), None)]
            with pytest.raises(BackendError, match="a slip in a hook"):
                await asyncio.wait_for(ask(), 10)
            assert await asyncio.wait_for(ask(), 10) == ["ok", Completion("ok", 1)]
        finally:
            worker.close()

    asyncio.run(main())


@pytest.mark.model
async def test_a_reset_drops_the_conversations_states_and_the_budget_holds(engines):
    engine = engines("budget", cache_bytes=8_000_000)  # room for one of these conversations' states (~7 MB each)
    await engine.warm_up()
    for conversation in ("a", "b", "c", "d"):
        await engine.reply(conversation, f"Hello from {conversation}! Who keeps this light?", speaker="Pip")
    worker = engine.backend.worker
    stats = engine.backend.cache_stats()
    assert 0 < stats["stored_bytes"] <= 8_000_000 and stats["evicted_bytes"] > 0
    assert any(e.key == "c\x1fOrla" for e in worker.cache.entries.values())
    await engine.reset("c")
    await engine.reply("d", "And the weather?", speaker="Pip")  # the worker forgets before its next request
    assert all(not e.key.startswith("c\x1f") for e in worker.cache.entries.values())
    assert all(not owner.startswith("c\x1f") for _tokens, owner in worker.kept.values())


@pytest.mark.model
async def test_a_state_spilled_to_disk_is_read_back(engines, tmp_path):
    spilling = engines("spill", cache_bytes=1, cache_dir=tmp_path / "kv")  # every state goes straight to disk
    alone = engines("alone")
    for engine in (spilling, alone):
        await engine.warm_up()
        await engine.reply("a", "Hello! Who keeps this light?", speaker="Pip")
    await spilling.reply("b", "Is the ferry running tonight?", speaker="Ann")
    assert list((tmp_path / "kv").rglob("*.kv"))
    before = spilling.backend.cache_stats()
    restored = await spilling.reply("a", "And how long have you kept it?", speaker="Pip")
    assert spilling.backend.cache_stats()["hits"] == before["hits"] + 1
    assert restored.text == (await alone.reply("a", "And how long have you kept it?", speaker="Pip")).text


@pytest.mark.model
async def test_cached_and_uncached_generation_give_the_same_greedy_tokens(engines):
    cached, uncached = engines("cached"), engines("uncached", cache_bytes=0)
    for engine in (cached, uncached):
        await engine.warm_up()
        await engine.reply("a", "Hello! Who keeps this light?", speaker="Pip")
        await engine.reply("b", "Is the ferry running tonight?", speaker="Ann")
    before = cached.backend.cache_stats()
    with_cache = await cached.reply("a", "And how long have you kept it?", speaker="Pip")
    without = await uncached.reply("a", "And how long have you kept it?", speaker="Pip")
    assert cached.backend.cache_stats()["hits"] == before["hits"] + 1 and "hits" not in uncached.backend.cache_stats()
    assert with_cache.text == without.text and not with_cache.fallback
