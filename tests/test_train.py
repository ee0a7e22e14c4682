"""charbot train on a tiny random Llama and the project's own sample script: labels, packing, learning, outputs."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.torch

import torch  # noqa: E402

from charbot.train.config import TrainConfig  # noqa: E402
from charbot.dataset import IGNORE, encode, load_jsonl  # noqa: E402
from charbot.rendering import Renderer  # noqa: E402
from train_support import make_prepared, make_tiny_base, make_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return make_prepared(root / "data"), make_tiny_base(root / "base")


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    from charbot.train.loop import train

    data, base = tiny
    out = tmp_path_factory.mktemp("run") / "out"
    cfg = TrainConfig(data=data, output_dir=out, base_model=str(base), max_steps=24, learning_rate=3e-3, batch_size=4,
                      eval_steps=12, logging_steps=4, save_steps=12, progress=False, threads=1, batching="packed")
    return train(cfg), cfg


TWO_REPLIES = [
    {"role": "system", "content": "You are Orla."},
    {"role": "user", "content": "Pip: Is the lamp lit?"},
    {"role": "assistant", "content": "Aye, sprat. Since dusk."},
    {"role": "user", "content": "Marlow: And the bell?"},
    {"role": "assistant", "content": "Rung twice, as ever."},
]


def test_only_the_characters_tokens_carry_labels():
    tok = make_tokenizer()
    msgs = TWO_REPLIES
    ids, labels = encode(tok, Renderer.for_tokenizer(tok, "chat"), msgs)
    assert len(ids) == len(labels)
    labelled = [i for i, lab in zip(ids, labels) if lab != IGNORE]
    assert tok.decode(labelled) == "Aye, sprat. Since dusk.<|im_end|>\nRung twice, as ever.<|im_end|>\n"
    # Everything else — system text, other speakers, role headers — is masked.
    masked = tok.decode([i for i, lab in zip(ids, labels) if lab == IGNORE])
    assert "Pip: Is the lamp lit?" in masked and "You are Orla." in masked and "<|im_start|>assistant" in masked
    assert all(lab in (IGNORE, i) for i, lab in zip(ids, labels))


def test_loss_on_last_labels_only_the_examples_own_line():
    """prepare's examples overlap: the line before this one is the previous example's own line."""
    tok = make_tokenizer()
    msgs = TWO_REPLIES
    ids, labels = encode(tok, Renderer.for_tokenizer(tok, "chat"), msgs, last_only=True)
    assert ids == encode(tok, Renderer.for_tokenizer(tok, "chat"), msgs)[0]
    assert tok.decode([i for i, lab in zip(ids, labels) if lab != IGNORE]) == "Rung twice, as ever.<|im_end|>\n"
    ids, labels = encode(tok, Renderer.for_tokenizer(tok, "dialogpt"), msgs, last_only=True)
    assert tok.decode([i for i, lab in zip(ids, labels) if lab != IGNORE]) == "Rung twice, as ever.<|im_end|>"


def test_named_replies_show_the_name_as_context_and_label_the_line():
    tok = make_tokenizer()
    msgs = [{"role": "user", "content": "Pip: Is the lamp lit?"}, {"role": "assistant", "content": "Aye, sprat."}]
    ids, labels = encode(tok, Renderer.for_tokenizer(tok, "chat"), msgs, speaker="Orla")
    assert "<|im_start|>assistant\nOrla: Aye, sprat.<|im_end|>" in tok.decode(ids)
    assert tok.decode([i for i, lab in zip(ids, labels) if lab != IGNORE]) == " Aye, sprat.<|im_end|>\n"


def test_dialogpt_format_joins_turns_with_eos_and_labels_the_reply():
    tok = make_tokenizer()
    msgs = [{"role": "system", "content": "ignored"}, {"role": "user", "content": "Pip: Fog again?"}, {"role": "assistant", "content": "Aye, sprat."}]
    ids, labels = encode(tok, Renderer.for_tokenizer(tok, "dialogpt"), msgs)
    assert tok.decode(ids) == "Pip: Fog again?<|im_end|>Aye, sprat.<|im_end|>"
    assert tok.decode([i for i, lab in zip(ids, labels) if lab != IGNORE]) == "Aye, sprat.<|im_end|>"


def test_packed_batch_gives_the_same_logits_as_separate_examples(tiny):
    """Padding-free packing must not let one example attend to another."""
    from transformers import AutoModelForCausalLM, DataCollatorWithFlattening

    from charbot.train.loop import prepare_for_training

    _, base = tiny
    model = AutoModelForCausalLM.from_pretrained(base)
    prepare_for_training(model)  # what `charbot train` does before the Trainer sees the model
    tok = make_tokenizer()
    seqs = [tok("Aye, sprat. Mind the step.")["input_ids"], tok("The fog lifts when the gulls stop.")["input_ids"]]
    batch = DataCollatorWithFlattening(return_position_ids=True)([{"input_ids": s} for s in seqs])
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        alone = torch.cat([model(torch.tensor([s])).logits[0] for s in seqs])
        plain = AutoModelForCausalLM.from_pretrained(base)
        leaky = plain(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
    assert torch.allclose(packed, alone, atol=1e-5)
    # The trap this guards against: with the KV cache on, transformers skips the packed-sequence mask.
    assert not torch.allclose(leaky, alone, atol=1e-5)


def test_training_lowers_loss_and_changes_weights(tiny, trained):
    from safetensors.torch import load_file

    _, base = tiny
    result, cfg = trained
    m = result.metrics
    assert m["steps"] == 24
    assert m["val_loss"] < m["val_loss_before"] - 0.2
    losses = [h["loss"] for h in result.log_history if "loss" in h]
    assert losses[-1] < losses[0]
    before, after = load_file(base / "model.safetensors"), load_file(result.output_dir / "model.safetensors")
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) == len(before)  # full fine-tune: every tensor moved
    assert m["useful_tokens"] > 0 and m["useful_tokens_per_s"] > 0


def test_output_directory_is_complete(trained):
    result, _ = trained
    out = result.output_dir
    for name in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja", "generation_config.json",
                 "persona.json", "README.md", "metrics.json", "loss.png", "training_config.json"):
        assert (out / name).is_file(), name
    gen = json.loads((out / "generation_config.json").read_text())
    assert (gen["temperature"], gen["top_k"], gen["top_p"], gen["no_repeat_ngram_size"]) == (0.8, 100, 0.7, 3)
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = (out / "README.md").read_text()
    assert "val_perplexity" in card and "Orla" in card
    assert not (out / ".saving").exists()
    assert json.loads((out / "config.json").read_text())["use_cache"] is True
    assert math.isclose(json.loads((out / "metrics.json").read_text())["val_loss"], result.metrics["val_loss"])


async def test_trained_directory_chats_through_the_engine(trained, tmp_path):
    from charbot.backends.transformers import TransformersBackend
    from charbot.engine import Engine
    from charbot.generation import GenerationSettings
    from charbot.memory_sqlite import SqliteStore
    from charbot.models import guess_backend
    from charbot.persona import load_card

    out = trained[0].output_dir
    assert guess_backend(str(out), None) == "transformers"
    backend = TransformersBackend(str(out), device="cpu")
    await backend.load()
    assert backend.default_prompt_format == "chat"
    store = SqliteStore(tmp_path / "m.db")
    engine = Engine(backend, store, load_card(out / "persona.json"), GenerationSettings(max_new_tokens=12, seed=1))
    reply = await engine.reply("c1", "Is the lamp lit?")
    assert reply.completion_tokens > 0
    assert [t.role for t in await store.history("c1")] == ["user", "assistant"]
    await store.close()
    await backend.aclose()


def test_lora_merge_gives_the_adapters_logits(tiny):
    from transformers import AutoModelForCausalLM

    from charbot.train.loop import add_lora

    _, base = tiny
    torch.manual_seed(0)
    model = add_lora(AutoModelForCausalLM.from_pretrained(base), TrainConfig(method="lora", lora_r=4, lora_alpha=8, lora_dropout=0.0))
    for name, p in model.named_parameters():
        if "lora_B" in name:  # B starts at zero; give the adapter something to say
            torch.nn.init.normal_(p, std=0.2)
    model.eval()
    ids = torch.tensor([make_tokenizer()("Aye, sprat. The lamp is lit.")["input_ids"]])
    with torch.no_grad():
        adapter = model(ids).logits
        merged = model.merge_and_unload()(ids).logits
    base_logits = AutoModelForCausalLM.from_pretrained(base)(ids).logits.detach()
    assert not torch.allclose(adapter, base_logits, atol=1e-3)  # the adapter does change the output
    assert torch.allclose(adapter, merged, atol=1e-5)


def test_lora_run_saves_a_plain_merged_model(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    from charbot.train.loop import train

    data, base = tiny
    result = train(TrainConfig(data=data, output_dir=tmp_path / "lora", base_model=str(base), method="lora", max_steps=6,
                               learning_rate=1e-2, batch_size=4, eval_steps=0, progress=False, threads=1))
    assert not (result.output_dir / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(result.output_dir)
    assert not any("lora" in n for n, _ in model.named_parameters())


def test_resume_after_a_crash_reaches_the_same_weights(tiny, tmp_path):
    import shutil

    from safetensors.torch import load_file

    from charbot.errors import ConfigError
    from charbot.train.loop import train

    data, base = tiny
    out = tmp_path / "r"
    kw = dict(data=data, output_dir=out, base_model=str(base), learning_rate=1e-3, batch_size=4, eval_steps=0,
              save_steps=3, max_steps=5, progress=False, threads=1, batching="packed")
    train(TrainConfig(**kw))
    uninterrupted = load_file(out / "model.safetensors")
    with pytest.raises(ConfigError, match="already holds"):
        train(TrainConfig(**kw))
    # Simulate a crash after the step-3 checkpoint: nothing later survives. (packed: the random sampler resumes
    # bit-exactly; with group_by_length the resumed batch order differs — a known gap.)
    shutil.rmtree(out / "checkpoints" / "checkpoint-5")
    for item in out.iterdir():
        if item.name != "checkpoints":
            item.unlink()
    result = train(TrainConfig(resume=True, **kw))
    assert result.metrics["steps"] == 5
    resumed = load_file(out / "model.safetensors")
    diffs = {k: float((resumed[k] - uninterrupted[k]).abs().max()) for k in resumed}
    assert max(diffs.values()) < 1e-6, diffs


def test_cast_first_trains_the_cast_then_the_character_and_resumes_in_the_second_phase(tiny, tmp_path):
    import shutil

    from safetensors.torch import load_file

    from charbot.errors import ConfigError
    from charbot.factory import sample_script_path
    from charbot.prepare import prepare
    from charbot.train.loop import train

    plain, base = tiny
    with pytest.raises(ConfigError, match="only Orla's examples"):
        train(TrainConfig(data=plain, output_dir=tmp_path / "no-cast", base_model=str(base), cast_first=True, max_steps=1, progress=False, threads=1))
    data = tmp_path / "cast"
    prepare(sample_script_path(), "Orla", data, cast=1)
    speakers = [ex.speaker for ex in load_jsonl(data / "train.jsonl")]
    out = tmp_path / "phased"
    kw = dict(data=data, output_dir=out, base_model=str(base), cast_first=True, learning_rate=1e-3, batch_size=4, eval_steps=2,
              logging_steps=1, save_steps=2, max_steps=3, progress=False, threads=1, batching="packed")
    result = train(TrainConfig(**kw))
    assert [(p["phase"], p["examples"], p["steps"]) for p in result.metrics["phases"]] == [
        ("cast", sum(s != "Orla" for s in speakers), 3), ("character", speakers.count("Orla"), 3)]
    assert result.metrics["steps"] == 6
    # one step axis for the plot: the character's phase logs after the cast's
    assert [h["step"] for h in result.log_history if "loss" in h] == [1, 2, 3, 4, 5, 6]
    assert "Phase 2, character" in (out / "README.md").read_text()
    uninterrupted = load_file(out / "model.safetensors")
    # a crash after the character phase's step-2 checkpoint: the cast phase is done, the second is half done
    shutil.rmtree(out / "checkpoints" / "character" / "checkpoint-3")
    for item in out.iterdir():
        if item.name != "checkpoints":
            item.unlink()
    resumed = train(TrainConfig(resume=True, **kw))
    assert resumed.metrics["steps"] == 6, resumed.metrics["phases"]
    diffs = {k: float((w - uninterrupted[k]).abs().max()) for k, w in load_file(out / "model.safetensors").items()}
    assert max(diffs.values()) < 1e-6, diffs


def test_bad_jsonl_line_is_one_line_error_and_writes_nothing(tiny, tmp_path, capsys):
    from charbot.cli import main

    data, base = tiny
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.jsonl").write_text((data / "train.jsonl").read_text().splitlines()[0] + "\n{not json\n")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(["train", str(bad), "-o", str(out), "--base-model", str(base), "--no-progress"])
    assert exc.value.code != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("charbot: error:") and "train.jsonl:2" in err and "\n" not in err
    assert not out.exists()


def test_load_jsonl_rejects_a_conversation_not_ending_with_the_character(tmp_path):
    from charbot.errors import ConfigError

    p = tmp_path / "train.jsonl"
    p.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(ConfigError, match=r"train.jsonl:1: the last message must be the character's line"):
        load_jsonl(p)


def test_push_without_token_fails_after_the_local_save(trained, monkeypatch):
    from charbot.errors import ConfigError
    from charbot.train.hub import push

    monkeypatch.delenv("HF_TOKEN", raising=False)
    out = trained[0].output_dir
    with pytest.raises(ConfigError, match="HF_TOKEN is not set") as exc:
        push(out, "someone/orla")
    assert str(out) in str(exc.value) and (out / "model.safetensors").is_file()


def test_train_flags_come_from_the_config_dataclass():
    from click.testing import CliRunner

    from charbot.cli.train import train as cmd

    help_text = CliRunner().invoke(cmd, ["--help"]).output
    for flag in ("--base-model", "--method", "--batching", "--lora-r", "--resume", "--push-to-hub", "--no-system"):
        assert flag in help_text


def test_push_with_the_hub_unreachable_is_one_line(trained, monkeypatch):
    import socket

    from charbot.errors import ModelError
    from charbot.train.hub import push

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    out = trained[0].output_dir
    with pytest.raises(ModelError, match="hub unreachable") as exc:
        push(out, "someone/orla", endpoint=f"http://127.0.0.1:{port}")
    assert "hf_not_a_real_token" not in str(exc.value) and "\n" not in str(exc.value)


def test_a_png_card_in_the_data_directory_becomes_the_models_persona_json(tiny, tmp_path):
    import shutil

    from card_files import png_image, with_card_chunks, wren
    from charbot.config import load_settings
    from charbot.factory import default_persona_path
    from charbot.persona import load_card
    from charbot.train.loop import train

    data, base = tiny
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    (copy / "persona.json").unlink()
    (copy / "persona.png").write_bytes(with_card_chunks(png_image(), chara=wren(2), ccv3=wren(3)))
    out = train(TrainConfig(data=copy, output_dir=tmp_path / "ft", base_model=str(base), max_steps=1, batch_size=4, eval_steps=0,
                            progress=False, threads=1)).output_dir
    card = load_card(out / "persona.json")
    assert card.name == "Wren" and card.book is not None and len(card.book.entries) == 5
    assert default_persona_path(load_settings(model=str(out))) == out / "persona.json"


def test_early_stopping_stops_on_val_and_ends_on_the_latest_weights_within_its_margin(tiny, tmp_path):
    from safetensors.torch import load_file

    from charbot.train.loop import train

    data, base = tiny

    def run(name: str, margin: float):
        # a rate this high overshoots: val improves for a few evaluations, then stalls and gets worse
        result = train(TrainConfig(data=data, output_dir=tmp_path / name, base_model=str(base), learning_rate=0.3, batch_size=4, epochs=4.0,
                                   early_stopping=True, patience=1, stop_margin=margin, progress=False, threads=1, batching="packed"))
        evals = [(h["step"], h["eval_loss"]) for h in result.log_history if "eval_loss" in h and h["step"] > 0]
        (stop,) = result.metrics["early_stopping"]
        return result, evals, stop

    result, evals, stop = run("strict", 0.0)
    assert json.loads((tmp_path / "strict" / "training_config.json").read_text())["early_stopping"] is True
    assert [s for s, _ in evals] == list(range(8, 8 * len(evals) + 1, 8))  # twice a pass: 63 examples / 4 per step = 16 steps
    best_step, best = min(evals, key=lambda e: e[1])
    assert stop["stopped_early"] and stop["steps_run"] < stop["steps_planned"] == 64
    assert evals[-1] == (best_step + 8, pytest.approx(evals[-1][1])) and evals[-1][1] > best  # one worse evaluation (patience 1): stop
    assert stop["kept_step"] == best_step and result.metrics["val_loss"] == pytest.approx(best, abs=1e-5)  # ended on the best, not the last
    saved = load_file(tmp_path / "strict" / "model.safetensors")
    kept = load_file(tmp_path / "strict" / "checkpoints" / f"checkpoint-{best_step}" / "model.safetensors")
    assert all(torch.equal(saved[k], kept[k]) for k in kept)

    # with a 1% margin, a stall within it is not progress: the run stops sooner, on the stalled step's weights
    _, within, stop = run("margin", 0.01)
    assert within == evals[: len(within)] and len(within) < len(evals)
    (_, prev), (last_step, last) = within[-2], within[-1]
    assert prev * 0.99 <= last <= prev * 1.01 and stop["kept_step"] == last_step == stop["steps_run"]


def test_a_resumed_early_stopped_run_ends_on_the_same_kept_weights(tiny, tmp_path):
    import shutil

    from safetensors.torch import load_file

    from charbot.train.loop import train

    data, base = tiny
    out = tmp_path / "es"
    kw = dict(data=data, output_dir=out, base_model=str(base), learning_rate=0.3, batch_size=4, epochs=4.0, early_stopping=True, patience=1,
              stop_margin=0.0, progress=False, threads=1, batching="packed")
    first = train(TrainConfig(**kw)).metrics["early_stopping"][0]
    assert first["stopped_early"] and first["kept_step"] < first["steps_run"]  # the kept weights are not the last ones
    uninterrupted = load_file(out / "model.safetensors")

    def resume() -> dict:
        for item in out.iterdir():
            if item.name != "checkpoints":
                item.unlink()
        metrics = train(TrainConfig(resume=True, **kw)).metrics["early_stopping"][0]
        resumed = load_file(out / "model.safetensors")
        assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)
        return metrics

    # the crash came after the last checkpoint: the finished phase ends on its kept checkpoint again
    assert resume()["kept_step"] == first["kept_step"]
    # the crash came before the last evaluation: the resumed run replays the evaluations it had made, so the
    # worse one after them still counts as worse, and stops it
    shutil.rmtree(out / "checkpoints" / f"checkpoint-{first['steps_run']}")
    again = resume()
    assert (again["kept_step"], again["steps_run"]) == (first["kept_step"], first["steps_run"])
