"""charbot export-gguf: the written file loads in the real llama.cpp and computes the same logits as transformers."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
llama_cpp = pytest.importorskip("llama_cpp")
pytestmark = pytest.mark.torch

import numpy as np  # noqa: E402
import torch  # noqa: E402

from train_support import make_tiny_base  # noqa: E402


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    return make_tiny_base(tmp_path_factory.mktemp("gguf") / "base")


def _compare(model_dir, gguf_path, text):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    hf = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = tok(text, add_special_tokens=False)["input_ids"]
    llm = llama_cpp.Llama(str(gguf_path), n_ctx=256, logits_all=True, verbose=False, n_threads=1)
    try:
        same_tokens = llm.tokenize(text.encode(), add_bos=False, special=True) == ids
        llm.eval(ids)
        ours = np.array(llm.scores[: len(ids)])
        meta = dict(llm.metadata)
    finally:
        llm.close()
    with torch.no_grad():
        theirs = hf(torch.tensor([ids])).logits[0].numpy()
    return same_tokens, ours, theirs, meta


# quantized files differ by quantization error: the tolerances grow with fewer bits
@pytest.mark.parametrize("dtype,tol,agree", [("f32", 1e-3, 0.95), ("f16", 5e-3, 0.95), ("q8_0", 1.5e-2, 0.9), ("q4_1", 0.12, 0.9)])
def test_exported_model_matches_transformers_in_llama_cpp(tiny_base, dtype, tol, agree):
    from charbot.export.gguf import export_gguf
    from transformers import AutoTokenizer

    path = export_gguf(tiny_base, dtype=dtype)
    assert path.name == f"model-{dtype}.gguf" and path.read_bytes()[:4] == b"GGUF"
    tok = AutoTokenizer.from_pretrained(tiny_base)
    text = tok.apply_chat_template([{"role": "system", "content": "You are Orla."}, {"role": "user", "content": "Pip: Is the lamp lit, 1991?"}],
                                   tokenize=False, add_generation_prompt=True)
    same_tokens, ours, theirs, meta = _compare(tiny_base, path, text)
    assert same_tokens  # vocab, merges and special tokens survived
    scale = np.abs(theirs).max()
    assert np.abs(ours - theirs).max() <= tol * max(1.0, scale)
    assert (ours.argmax(-1) == theirs.argmax(-1)).mean() > agree
    assert "<|im_start|>" in meta["tokenizer.chat_template"]


def test_untied_output_head_is_exported(tmp_path):
    from charbot.export.gguf import export_gguf

    base = make_tiny_base(tmp_path / "untied", tie=False)
    path = export_gguf(base, dtype="f32")
    _, ours, theirs, _ = _compare(base, path, "Aye, sprat. Mind the step.")
    assert np.abs(ours - theirs).max() < 1e-3


def test_non_llama_model_is_a_one_line_error(tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    from charbot.cli import main

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(SystemExit) as exc:
        main(["export-gguf", str(tmp_path / "gpt2")])
    assert exc.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()[-1]  # earlier lines: the test's own save_pretrained bar
    assert err.startswith("charbot: error:") and "gpt2" in err and "\n" not in err
    assert not list((tmp_path / "gpt2").glob("*.gguf*"))


def test_cli_export_then_guess_backend_prefers_the_gguf(tiny_base, tmp_path, capsys):
    import shutil

    from charbot.cli import main
    from charbot.models import guess_backend

    d = tmp_path / "m"
    shutil.copytree(tiny_base, d, ignore=shutil.ignore_patterns("*.gguf"))
    with pytest.raises(SystemExit) as exc:
        main(["export-gguf", str(d), "--dtype", "f16"])
    assert exc.value.code == 0
    assert (d / "model-f16.gguf").is_file()
    assert guess_backend(str(d), None) == "llamacpp"
