"""The llama.cpp backend on the real embedded model: generation, streaming, continuous batching (the same greedy
tokens as one at a time), stop strings, cancellation, seeds and bad model files."""

import asyncio

import pytest

from charbot.backends import create_backend
from charbot.backends.base import Message, Prompt
from charbot.backends.llamacpp import LlamaCppBackend
from charbot.config import load_settings
from charbot.engine import Engine
from charbot.errors import ModelError
from charbot.generation import GenerationSettings
from charbot.models import check_gguf, embedded_model_path

pytestmark = pytest.mark.model

QUESTIONS = ["Who are you?", "What is the weather like?", "Tell me a joke.", "Where do you live?", "Do you like tea?"]
# Greedy with EOS ignored: every reply is exactly 12 tokens, so the comparisons below cover every token.
GREEDY = GenerationSettings(max_new_tokens=12, do_sample=False, no_repeat_ngram_size=0, ignore_eos=True)


def ask(question: str) -> Prompt:
    return Prompt(messages=(Message("system", "You are Orla, a grumpy lighthouse keeper."), Message("user", question)))


@pytest.fixture(scope="module")
def llama():
    # loaded once per module: the model lives in its worker thread, so each test's event loop can use it.
    # No prompt cache here (test_prompt_cache.py has its own): `read_afresh` must really leave nothing behind.
    backend = LlamaCppBackend(embedded_model_path(), context_window=512, threads=2, cache_bytes=0)
    asyncio.run(backend.load())
    yield backend
    asyncio.run(backend.aclose())


@pytest.fixture(scope="module")
def batched():
    backend = LlamaCppBackend(embedded_model_path(), context_window=512, threads=2, parallel=3, cache_bytes=0)
    asyncio.run(backend.load())
    yield backend
    asyncio.run(backend.aclose())


async def test_chat_completion(llama):
    out = await llama.complete(ask("Say hello."), GenerationSettings(max_new_tokens=12, do_sample=False))
    assert out.text.strip() and 0 < out.completion_tokens <= 12 and out.prompt_tokens > 5
    assert llama.ready and llama.default_prompt_format == "chat" and llama.eos_token == "<|im_end|>"


async def read_afresh(backend) -> None:
    """Leave an unrelated prompt in the prefix cache, so the next prompt is read whole. (A prompt read partly
    from the cache is computed in other chunks, and float rounding then differs in the last bits.)"""
    await backend.complete(Prompt(text="#"), GenerationSettings(max_new_tokens=1, do_sample=False))


async def test_streamed_pieces_add_up_to_the_completion(llama):
    prompt = Prompt(messages=(Message("user", "Name three colours."),))
    await read_afresh(llama)
    pieces = [p async for p in llama.stream(prompt, GREEDY)]
    await read_afresh(llama)
    assert len(pieces) > 1 and "".join(pieces) == (await llama.complete(prompt, GREEDY)).text


async def test_raw_text_prompt(llama):
    out = await llama.complete(Prompt(text="The capital of France is"), GenerationSettings(max_new_tokens=4, do_sample=False))
    assert "Paris" in out.text


async def test_no_repeat_ngram_prevents_loops(llama):
    prompt = Prompt(text="I am here. I am here. I am here. I am here.")
    loop = await llama.complete(prompt, GREEDY.but(max_new_tokens=16))
    free = await llama.complete(prompt, GREEDY.but(max_new_tokens=16, no_repeat_ngram_size=3))
    ids = llama._model.tokenize(free.text)
    grams = [tuple(ids[i : i + 3]) for i in range(len(ids) - 2)]
    assert "I am here. I am here." in loop.text  # without the rule the model loops
    assert len(grams) == len(set(grams))


async def test_seeds_are_per_request_and_reproducible(llama):
    sampled = GenerationSettings(max_new_tokens=16, temperature=1.0, top_p=1.0, no_repeat_ngram_size=0)
    seeded = [(await llama.complete(ask("Tell me a story."), sampled.but(seed=s))).text for s in (5, 5, 6, 7)]
    assert seeded[0] == seeded[1]
    assert len(set(seeded[1:])) > 1  # other seeds, other samples
    with pytest.raises(TypeError):
        LlamaCppBackend(embedded_model_path(), seed=1)  # a backend-wide seed would be silently ignored


async def test_engine_on_real_model(llama, store, sample_card):
    engine = Engine(llama, store, sample_card, GenerationSettings(max_new_tokens=24, seed=1), fallback_reply="<fallback>")
    await engine.warm_up()
    first = await engine.reply("c", "Hello! Who are you?")
    second = await engine.reply("c", "What do you do all day?")
    for reply in (first, second):
        assert not reply.fallback and reply.text != "<fallback>" and len(reply.text.split()) >= 2 and reply.completion_tokens > 0
    assert second.turns_in_prompt == 2
    assert llama.count_tokens("Hello world") in (2, 3)


async def test_batched_greedy_equals_one_at_a_time(llama, batched):
    """Each sequence has its own KV stream and llama.cpp's kernels compute each row on its own, so decoding
    sequences together changes no token: five requests on three slots (two wait; prompts share a prefix)."""
    expected = [await llama.complete(ask(q), GREEDY) for q in QUESTIONS]
    got = await asyncio.gather(*(batched.complete(ask(q), GREEDY) for q in QUESTIONS))
    assert [c.text for c in got] == [c.text for c in expected]
    assert all(c.completion_tokens == 12 and c.prompt_tokens > 10 for c in got)
    assert batched.worker.most_sequences == 3  # they really were decoded together
    assert batched.active == 0


async def test_streams_interleave_and_stop_strings_cut(batched):
    free = (await batched.complete(ask("Tell me a joke."), GREEDY)).text
    stop = free.split()[len(free.split()) // 2]  # a word the reply reaches half way
    arrivals: list[str] = []

    async def collect(name: str, question: str, settings: GenerationSettings) -> str:
        text = ""
        async for piece in batched.stream(ask(question), settings):
            arrivals.append(name)
            text += piece
        return text

    a, b = await asyncio.gather(collect("a", "Who are you?", GREEDY), collect("b", "Tell me a joke.", GREEDY.with_stop(stop)))
    assert b == free[: free.index(stop)] and stop not in b
    # interleaved: each stream got pieces before the other one's last piece
    assert arrivals.index("a") < len(arrivals) - 1 - arrivals[::-1].index("b")
    assert arrivals.index("b") < len(arrivals) - 1 - arrivals[::-1].index("a")


async def test_consumer_that_stops_early_frees_its_slot(batched):
    gen = batched.stream(ask("Tell me a very long story about the sea."), GREEDY.but(max_new_tokens=200))
    assert await gen.__anext__()
    await gen.aclose()
    for _ in range(200):  # the worker frees the slot at its next step
        if batched.active == 0:
            break
        await asyncio.sleep(0.05)
    assert batched.active == 0
    assert (await batched.complete(ask("Who are you?"), GREEDY)).completion_tokens == 12


def test_parallel_setting_sizes_the_backend(isolated_env):
    assert create_backend(load_settings(parallel=4)).parallel == 4
    assert create_backend(load_settings()).parallel == 1  # one conversation at a time unless asked


async def test_reply_prefix_is_continued_not_repeated(llama, batched):
    """`reply_prefix` is read after the generation prompt and only what follows it is returned."""
    plain = ask("Who keeps the light?")
    primed = Prompt(messages=plain.messages, reply_prefix="Orla: The")
    extra = llama.count_tokens("Orla: The")
    for backend in (llama, batched):
        a = await backend.complete(plain, GREEDY)
        b = await backend.complete(primed, GREEDY)
        assert b.prompt_tokens == a.prompt_tokens + extra, backend
        assert not b.text.lstrip().startswith(("Orla:", "The ")), b.text
    assert (await llama.complete(primed, GREEDY)).text == (await batched.complete(primed, GREEDY)).text


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
    for name, size in (("model-f16.gguf", 300), ("model-q4_1.gguf", 100), ("model-q8_0.gguf", 200)):
        (tmp_path / name).write_bytes(b"GGUF" + b"\0" * size)
    assert check_gguf(tmp_path).name == "model-q4_1.gguf"
