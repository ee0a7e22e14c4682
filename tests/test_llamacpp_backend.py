"""The llama.cpp backend with the real embedded model (short generations)."""

import asyncio

import numpy as np
import pytest

from charbot.backends.base import Message, Prompt
from charbot.backends.llamacpp import LlamaCppBackend, NoRepeatNGramProcessor
from charbot.engine import Engine
from charbot.errors import ModelError
from charbot.generation import GenerationSettings
from charbot.models import embedded_model_path

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def llama():
    # loaded once per module: the model holds no event-loop state, so each test's loop can use it
    backend = LlamaCppBackend(embedded_model_path(), context_window=1024, threads=2)
    asyncio.run(backend.load())
    yield backend
    asyncio.run(backend.aclose())


def greedy(n=12, **kw):
    return GenerationSettings(max_new_tokens=n, do_sample=False, **kw)


async def test_chat_completion(llama):
    prompt = Prompt(messages=(Message("system", "You are a pirate."), Message("user", "Say hello.")))
    out = await llama.complete(prompt, greedy())
    assert out.text.strip() and 0 < out.completion_tokens <= 12 and out.prompt_tokens > 5
    assert llama.ready and llama.default_prompt_format == "chat" and llama.eos_token


async def test_streaming_yields_pieces(llama):
    # (greedy output is not compared across calls: llama.cpp's prompt-cache reuse changes float rounding)
    prompt = Prompt(messages=(Message("user", "Name three colours."),))
    pieces = [p async for p in llama.stream(prompt, greedy())]
    assert len(pieces) > 1 and "".join(pieces).strip()


async def test_raw_text_prompt(llama):
    out = await llama.complete(Prompt(text="The capital of France is"), greedy(4))
    assert out.text.strip()


async def test_no_repeat_ngram_prevents_loops(llama):
    prompt = Prompt(text="I am here. I am here. I am here. I am here.")
    loop = await llama.complete(prompt, greedy(16, no_repeat_ngram_size=0))
    free = await llama.complete(prompt, greedy(16, no_repeat_ngram_size=3))
    ids = llama.llm.tokenize(free.text.encode(), add_bos=False)
    grams = [tuple(ids[i : i + 3]) for i in range(len(ids) - 2)]
    assert "I am here. I am here." in loop.text  # without the rule the model loops
    assert len(grams) == len(set(grams))


def test_no_repeat_processor_masks_scores():
    proc = NoRepeatNGramProcessor(2)
    scores = np.zeros(10, dtype=np.single)
    prompt = np.array([1, 2, 3], dtype=np.intc)
    proc(prompt, scores.copy())  # first call: prompt only
    proc(np.array([1, 2, 3, 7], dtype=np.intc), scores.copy())
    out = proc(np.array([1, 2, 3, 7, 8, 7], dtype=np.intc), scores.copy())
    assert out[8] == -np.inf and np.isfinite(out[[0, 1, 2, 3, 7, 9]]).all()


async def test_engine_on_real_model(llama, store, sample_card):
    engine = Engine(llama, store, sample_card, GenerationSettings(max_new_tokens=24, seed=1))
    await engine.warm_up()
    first = await engine.reply("c", "Hello! Who are you?")
    second = await engine.reply("c", "What do you do all day?")
    assert first.text and second.text and second.turns_in_prompt == 2
    assert llama.count_tokens("Hello world") in (2, 3)


def test_missing_and_corrupt_model_files(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        LlamaCppBackend(tmp_path / "nope.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelError, match="not a GGUF file"):
        LlamaCppBackend(bad)


async def test_truncated_gguf_is_a_model_error(tmp_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(embedded_model_path().read_bytes()[:200_000])
    backend = LlamaCppBackend(cut)
    with pytest.raises(ModelError, match="could not load"):
        await backend.load()


def test_a_directory_with_several_exports_serves_the_smallest(tmp_path):
    from charbot.models import check_gguf

    for name, size in (("model-f16.gguf", 300), ("model-q4_1.gguf", 100), ("model-q8_0.gguf", 200)):
        (tmp_path / name).write_bytes(b"GGUF" + b"\0" * size)
    assert check_gguf(tmp_path).name == "model-q4_1.gguf"
