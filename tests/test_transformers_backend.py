"""The transformers backend on a tiny random model built inside the test (no hub, no download)."""

import pytest

pytest.importorskip("torch")

from tiny_model import build_tiny_model

from charbot.backends.base import Message, Prompt
from charbot.backends.transformers import TransformersBackend
from charbot.engine import Engine
from charbot.errors import ModelError
from charbot.generation import GenerationSettings
from charbot.models import guess_backend

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny-chat"))


@pytest.fixture(scope="module")
def plain_model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny-plain"), chat_template=False)


async def test_chat_model_generates_and_streams(chat_model):
    backend = TransformersBackend(str(chat_model), device="cpu")
    await backend.load()
    assert backend.ready and backend.default_prompt_format == "chat" and backend.eos_token == "<|im_end|>"
    prompt = Prompt(messages=(Message("system", "You are Orla."), Message("user", "Hello there")))
    settings = GenerationSettings(max_new_tokens=6, no_repeat_ngram_size=0, seed=3)
    out = await backend.complete(prompt, settings)
    assert out.completion_tokens > 0 and out.prompt_tokens > 5
    again = await backend.complete(prompt, settings)
    assert again.text == out.text  # same seed, same sample
    pieces = [p async for p in backend.stream(prompt, settings)]
    assert "".join(pieces) == out.text
    assert backend.count_tokens("Hello there") >= 2
    primed = await backend.complete(Prompt(messages=prompt.messages, reply_prefix="Orla:"), settings)
    assert primed.prompt_tokens == out.prompt_tokens + backend.count_tokens("Orla:")  # continued after the prefix


async def test_dialogpt_style_model_through_the_engine(plain_model, store, sample_card):
    backend = TransformersBackend(str(plain_model), device="cpu")
    await backend.load()
    assert backend.default_prompt_format == "dialogpt" and backend.eos_token == "<|endoftext|>"
    # EOS ignored: the random tiny model writes 8 tokens of text, never an empty reply that would fall back
    engine = Engine(backend, store, sample_card, GenerationSettings(max_new_tokens=8, do_sample=False, ignore_eos=True), fallback_reply="(silence)")
    first = await engine.reply("c", "Hello there")
    second = await engine.reply("c", "How are you today?")
    assert not first.fallback and not second.fallback and first.completion_tokens == 8
    assert [t.role for t in await store.history("c")] == ["user", "assistant"] * 2
    assert second.turns_in_prompt == 2  # the first exchange went into the second prompt, joined by EOS


def test_auto_backend_picks_transformers_for_hf_dirs(chat_model):
    assert guess_backend(str(chat_model), None) == "transformers"
    assert guess_backend("microsoft/DialoGPT-small", None) == "transformers"
    assert guess_backend(None, None) == "llamacpp"
    assert guess_backend(None, "http://127.0.0.1:8000/v1") == "remote"


async def test_missing_model_is_a_model_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    backend = TransformersBackend(str(tmp_path / "no-such-model"), device="cpu")
    with pytest.raises(ModelError, match="could not load"):
        await backend.load()
