"""Dynamic batching in the transformers backend, on the tiny model: batched greedy output equals one-at-a-time."""

import asyncio

import pytest

pytest.importorskip("torch")

from tiny_model import build_tiny_model

from charbot.backends.base import Message, Prompt
from charbot.backends.transformers import TransformersBackend
from charbot.engine import Engine
from charbot.generation import GenerationSettings

pytestmark = pytest.mark.torch

QUESTIONS = ["Hello there", "Who are you and what brings you up my tower?", "Mind the step", "The kettle is on.",
             "Batten down the hatches, a storm is coming in from the west, sprat."]
GREEDY = GenerationSettings(max_new_tokens=10, do_sample=False, no_repeat_ngram_size=0)
# The random tiny model may end at once; with EOS ignored every reply is generated text of a known length.
FULL = GREEDY.but(ignore_eos=True)


def ask(q: str) -> Prompt:
    return Prompt(messages=(Message("system", "You are Orla, a lighthouse keeper."), Message("user", q)))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny-batch"))


@pytest.fixture
async def backend(model_dir):
    b = TransformersBackend(str(model_dir), device="cpu", parallel=4, threads=1)
    await b.load()
    yield b
    await b.aclose()


async def test_batched_greedy_equals_one_at_a_time(backend):
    sizes = backend.worker.batch_sizes
    alone = [await backend.complete(ask(q), GREEDY) for q in QUESTIONS]
    assert sizes == {1: len(QUESTIONS)}
    together = await asyncio.gather(*(backend.complete(ask(q), GREEDY) for q in QUESTIONS))
    # five requests, four per batch: the first may start alone before the rest queue, then they go together
    assert max(sizes) > 1 and sum(size * n for size, n in sizes.items()) == 2 * len(QUESTIONS)
    assert [c.text for c in together] == [c.text for c in alone]
    assert [c.completion_tokens for c in together] == [c.completion_tokens for c in alone]
    assert all(c.text for c in alone) and len({c.prompt_tokens for c in alone}) > 1  # different lengths: real padding


async def test_rows_stop_on_their_own_stop_strings_and_caps(backend):
    free = await backend.complete(ask("Hello there"), GenerationSettings(max_new_tokens=12, do_sample=False, no_repeat_ngram_size=0))
    assert len(free.text) > 3
    stop = free.text[2:4]
    capped, stopped = await asyncio.gather(
        backend.complete(ask("Hello there"), GenerationSettings(max_new_tokens=3, do_sample=False, no_repeat_ngram_size=0)),
        backend.complete(ask("Hello there"), GREEDY.with_stop(stop)),
    )
    assert capped.completion_tokens == 3 and capped.finish_reason == "length"
    assert stopped.finish_reason == "stop" and stop not in stopped.text and free.text.startswith(stopped.text)


async def test_streams_of_a_batch_add_up_to_their_completions(backend):
    async def pieces(q):
        return [p async for p in backend.stream(ask(q), GREEDY)]

    streamed = await asyncio.gather(*(pieces(q) for q in QUESTIONS[:3]))
    expected = [await backend.complete(ask(q), GREEDY) for q in QUESTIONS[:3]]
    assert ["".join(p) for p in streamed] == [c.text for c in expected]


async def test_engine_serves_conversations_in_batches(backend, store, sample_card):
    engine = Engine(backend, store, sample_card, FULL, fallback_reply="<fallback>")
    assert engine.scheduler.capacity == 4
    replies = await asyncio.gather(*(engine.reply(f"c{i}", q) for i, q in enumerate(QUESTIONS)))
    assert max(backend.worker.batch_sizes) > 1  # conversations really shared generate calls
    assert all(not r.fallback and r.text != "<fallback>" and r.completion_tokens == 10 for r in replies)
    assert all([await store.count_messages(f"c{i}") == 2 for i in range(len(QUESTIONS))])
