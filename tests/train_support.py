"""Tiny, fast stand-ins for training tests: an original mini-script, a BPE tokenizer and a 2-layer Llama.

Everything is built in the test from the project's own text, so no download and no real script is needed.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from charbot.factory import sample_card_path, sample_script_path

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Original lines: Orla keeps a lighthouse and answers everything in her own salty way.
SCENES = {
    "ep1": [
        ("Pip", "Captain, the lamp is flickering again."),
        ("Orla", "Aye, sprat. Fetch the brass oil and mind the third step."),
        ("Pip", "Why does the third step always creak?"),
        ("Orla", "Aye, sprat. It remembers every storm since ninety-one."),
        ("Marlow", "A ship is coming round the point."),
        ("Orla", "Aye, sprat. Light the lamp and ring the bell twice."),
    ],
    "ep2": [
        ("Pip", "Is the fog going to lift tonight?"),
        ("Orla", "Aye, sprat. Fog lifts when the gulls stop gossiping."),
        ("Marlow", "The gulls never stop gossiping."),
        ("Orla", "Aye, sprat. Then we keep the lamp burning till dawn."),
        ("Pip", "Can I sleep now?"),
        ("Orla", "Aye, sprat. After you wind the clockwork and check the wick."),
    ],
    "ep3": [
        ("Marlow", "The harbour master wants the logbook."),
        ("Orla", "Aye, sprat. Tell him the logbook stays with the lamp."),
        ("Pip", "He looked angry."),
        ("Orla", "Aye, sprat. Angry men still need a light to get home."),
    ],
    "ep4": [
        ("Pip", "There is a storm on the horizon."),
        ("Orla", "Aye, sprat. Batten the shutters and trim the wick."),
        ("Marlow", "Should we wake the village?"),
        ("Orla", "Aye, sprat. Ring the bell and keep the lamp burning."),
    ],
}


def script_rows() -> list[tuple[str, str, str]]:
    """(episode, name, line) rows: the shipped sample script when present, else the scenes above."""
    path = sample_script_path()
    if path.is_file():
        with path.open(encoding="utf-8", newline="") as fh:
            rows = [(r["episode"], r["name"], r["line"]) for r in csv.DictReader(fh)]
        if rows:
            return rows
    return [(ep, name, line) for ep, lines in SCENES.items() for name, line in lines]


def make_prepared(directory: Path, character: str = "Orla", context_turns: int = 3, val_episodes: int = 1, test_episodes: int = 0) -> Path:
    """The `charbot prepare` layout: train.jsonl / val.jsonl (/ test.jsonl with `test_episodes`; split by episode) / persona.json."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = script_rows()
    card = json.loads(sample_card_path().read_text(encoding="utf-8"))
    system = f"You are {character}. " + card.get("data", card).get("description", "")[:300]
    episodes = list(dict.fromkeys(ep for ep, _, _ in rows))
    test_set = set(episodes[len(episodes) - test_episodes:]) if test_episodes else set()
    val_set = set(episodes[-val_episodes - test_episodes:][:val_episodes])
    out = {"train": [], "val": [], **({"test": []} if test_episodes else {})}
    for i, (ep, name, line) in enumerate(rows):
        if name != character:
            continue
        ctx = [r for r in rows[max(0, i - context_turns) : i] if r[0] == ep]
        msgs = [{"role": "system", "content": system}]
        for _, n, text in ctx:
            msgs.append({"role": "assistant", "content": text} if n == character else {"role": "user", "content": f"{n}: {text}"})
        if len(msgs) == 1:
            msgs.append({"role": "user", "content": "Pip: Captain?"})
        msgs.append({"role": "assistant", "content": line})
        split = "test" if ep in test_set else "val" if ep in val_set else "train"
        out[split].append({"messages": msgs, "episode": ep, "speaker": character, "source_line": i + 2})
    for split, items in out.items():
        (directory / f"{split}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in items), encoding="utf-8")
    (directory / "persona.json").write_text(sample_card_path().read_text(encoding="utf-8"), encoding="utf-8")
    return directory


def make_tokenizer(vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    text = [line for _, _, line in script_rows()] + ["Pip: Marlow: Orla: You are Orla. system user assistant"]
    tok.train_from_iterator(text * 3, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None)
    fast.chat_template = CHATML
    return fast


def make_tiny_base(directory: Path, tie: bool = True) -> Path:
    """A random 2-layer Llama with the in-test tokenizer, saved like any HF model directory."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = make_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=tie, rms_norm_eps=1e-5,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory
