"""One renderer for serving, training and evaluation: the same conversation rendered through each path gives the
same token ids, and the chat template renders as transformers renders it."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from tiny_model import build_tiny_model  # noqa: E402

from charbot.backends.transformers import TransformersBackend  # noqa: E402
from charbot.chat_template import ChatTemplate  # noqa: E402
from charbot.dataset import IGNORE, encode  # noqa: E402
from charbot.engine import Engine  # noqa: E402
from charbot.memory import Turn  # noqa: E402
from charbot.persona import CardData, CharacterCard, render  # noqa: E402
from charbot.rendering import Renderer  # noqa: E402

pytestmark = pytest.mark.torch

CARD = CharacterCard(data=CardData(name="Orla", description="Keeper of the Saltmarsh Light.", personality="gruff, kind"))
HISTORY = [
    Turn("user", "Fog again?", "Pip"),
    Turn("assistant", "Aye, thick as porridge.", "Orla"),
    Turn("user", "And the bell?", "Pip"),
    Turn("user", "Did anyone ring it?", "Ann"),  # two people in a row: one user turn, as prepare writes it
]
NEW = ("Ring it now.", "Pip")


def prepared_example(named: bool) -> list[dict]:
    """The same conversation as `charbot prepare` writes it: other speakers named, consecutive lines joined."""
    system = render(CARD, "User").system
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": "Pip: Fog again?"},
        {"role": "assistant", "content": "Aye, thick as porridge."},
        {"role": "user", "content": "Pip: And the bell?\nAnn: Did anyone ring it?\nPip: Ring it now."},
        {"role": "assistant", "content": "Rung twice, as ever."},
    ]


@pytest.fixture(scope="module", params=["chat", "dialogpt"])
def model_dir(request, tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp(f"tiny-{request.param}"), chat_template=request.param == "chat")


@pytest.fixture
async def backend(model_dir):
    b = TransformersBackend(str(model_dir), device="cpu", threads=1)
    await b.load()
    yield b
    await b.aclose()


async def test_serving_training_and_eval_send_the_same_tokens(backend, store):
    from charbot.eval.run import generate
    from charbot.generation import GenerationSettings

    tok = backend.tokenizer
    renderer = Renderer.for_tokenizer(tok)
    named = renderer.fmt == "chat"  # DialoGPT-style models are shown no names
    await store.add_exchange("c", HISTORY)

    # serving: the engine's prompt (the Discord path, speakers named), tokenized by the backend
    engine = Engine(backend, store, CARD, user_name="User")
    built, _ = await engine.build_prompt("c", *NEW)
    served = backend.prompt_tokens(built.prompt)

    # training: the prepared example, its last reply's labels begin where serving's prompt ends
    ids, labels = encode(tok, renderer, prepared_example(named), last_only=True, speaker="Orla" if named else None)
    first_label = next(i for i, label in enumerate(labels) if label != IGNORE)
    assert ids[:first_label] == served

    # evaluation: what `charbot eval` feeds the model for the same example
    class Recording:
        def __init__(self, model):
            self.model = model

        def generate(self, **kw):
            self.input_ids = kw["input_ids"][0].tolist()
            return self.model.generate(**kw)

    recording = Recording(backend.worker.model)
    generate(recording, tok, renderer, prepared_example(named), GenerationSettings(max_new_tokens=2), "Orla", ("Pip", "Ann"), named=named)
    assert recording.input_ids == served


def test_chat_template_renders_as_transformers_does(model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    if not tok.chat_template:
        assert ChatTemplate.from_tokenizer(tok) is None
        return
    ours = ChatTemplate.from_tokenizer(tok)
    messages = prepared_example(True)
    for cut in range(1, len(messages) + 1):
        for gen in (False, True):
            assert ours.render(messages[:cut], add_generation_prompt=gen) == tok.apply_chat_template(
                messages[:cut], tokenize=False, add_generation_prompt=gen
            )


def test_the_embedded_models_template_renders_as_transformers_does():
    """SmolLM2's own template (from the GGUF), which uses more Jinja than ChatML: system default, loops."""
    from llama_cpp import Llama
    from train_support import make_tokenizer

    from charbot.models import embedded_model_path

    source = Llama(str(embedded_model_path()), vocab_only=True, verbose=False).metadata["tokenizer.chat_template"]
    tok = make_tokenizer()
    tok.chat_template = source
    ours = ChatTemplate(source, bos_token=tok.bos_token, eos_token=tok.eos_token)
    for messages in (prepared_example(True), prepared_example(True)[1:]):  # with and without a system message
        for gen in (False, True):
            assert ours.render(messages, add_generation_prompt=gen) == tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
