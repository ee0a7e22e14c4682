"""HF Llama-family model directory → GGUF (F32/F16) that llama.cpp loads, tokenizer and chat template included.

Follows llama.cpp's convert_hf_to_gguf.py for the llama architecture: the same tensor names, and Q/K rows
permuted from HF's rotate-half layout into llama.cpp's interleaved RoPE layout.
"""

from __future__ import annotations

import json
from pathlib import Path

from charbot.errors import ModelError

# HF name (after "model.layers.N.") → GGUF name (after "blk.N.")
LAYER_TENSORS = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
TOP_TENSORS = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}
SUPPORTED = {"llama", "mistral"}


def permute_rope(w, n_head: int):
    """HF stores each head's rotary pairs as [first halves | second halves]; llama.cpp wants them interleaved."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tensor_name(hf_name: str) -> str | None:
    if hf_name in TOP_TENSORS:
        return TOP_TENSORS[hf_name]
    if hf_name.startswith("model.layers."):
        idx, _, rest = hf_name[len("model.layers.") :].partition(".")
        if rest in LAYER_TENSORS:
            return f"blk.{idx}.{LAYER_TENSORS[rest]}"
    if hf_name.endswith("rotary_emb.inv_freq"):
        return None  # recomputed by llama.cpp from rope_freq_base
    raise ModelError(f"tensor {hf_name} has no GGUF name", "only plain Llama-architecture models can be exported")


def pre_tokenizer_name(tokenizer) -> str:
    """llama.cpp's name for the pre-tokenizer regex, from the HF tokenizer's own description."""
    pre = json.loads(tokenizer.backend_tokenizer.to_str()).get("pre_tokenizer") or {}
    kinds = [p.get("type") for p in pre.get("pretokenizers", [pre])]
    if kinds == ["ByteLevel"] and pre.get("use_regex", True):
        return "gpt-2"  # llama.cpp spells it with a hyphen
    if kinds == ["Digits", "ByteLevel"]:
        return "smollm"
    raise ModelError(f"pre-tokenizer {kinds} is not one charbot can describe to llama.cpp", "export with llama.cpp's convert_hf_to_gguf.py instead")


def tokenizer_metadata(writer, tokenizer, vocab_size: int) -> None:
    import gguf

    tj = json.loads(tokenizer.backend_tokenizer.to_str())
    if tj.get("model", {}).get("type") != "BPE":
        raise ModelError("only byte-level BPE tokenizers can be exported", "export with llama.cpp's convert_hf_to_gguf.py instead")
    vocab = tokenizer.get_vocab()
    by_id = {i: t for t, i in vocab.items()}
    added = {a["id"]: a for a in tj.get("added_tokens", [])}
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(added[i]["content"])
            types.append(gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"].get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(tokenizer))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for name, tid in (("bos", tokenizer.bos_token_id), ("eos", tokenizer.eos_token_id), ("pad", tokenizer.pad_token_id), ("unk", tokenizer.unk_token_id)):
        if tid is not None:
            getattr(writer, f"add_{name}_token_id")(tid)
    writer.add_add_bos_token(False)  # charbot's prompts (chat template) carry their own markers
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


# file type, tensor type: q8_0 keeps quality, q4_1 is what the embedded model ships as (fastest on CPU)
DTYPES = {
    "f32": ("ALL_F32", "F32"),
    "f16": ("MOSTLY_F16", "F16"),
    "q8_0": ("MOSTLY_Q8_0", "Q8_0"),
    "q4_1": ("MOSTLY_Q4_1", "Q4_1"),
}


def export_gguf(model_dir: Path, out: Path | None = None, dtype: str = "f16") -> Path:
    """Write `model_dir` as GGUF (default: MODEL_DIR/model-<dtype>.gguf); returns the file's path."""
    import gguf
    import numpy as np
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(model_dir).expanduser()
    if not (model_dir / "config.json").is_file():
        raise ModelError(f"{model_dir} is not an HF model directory (no config.json)", "pass the directory `charbot train` wrote")
    if dtype not in DTYPES:
        raise ModelError(f"unsupported GGUF dtype {dtype!r}", f"use one of {', '.join(DTYPES)}")
    config = AutoConfig.from_pretrained(model_dir)
    if config.model_type not in SUPPORTED:
        raise ModelError(f"{model_dir}: architecture {config.model_type!r} cannot be exported yet", "only Llama-family models (e.g. SmolLM2) are supported")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    out = Path(out) if out else model_dir / f"model-{dtype}.gguf"

    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    rope = getattr(config, "rope_parameters", None) or {}
    rope_theta = rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    if rope.get("rope_type", "default") not in ("default", None):
        raise ModelError(f"rope scaling {rope.get('rope_type')!r} is not exported yet", "export with llama.cpp's convert_hf_to_gguf.py instead")

    tmp = out.with_name(out.name + ".partial")
    writer = gguf.GGUFWriter(str(tmp), "llama")
    try:
        writer.add_name(model_dir.name)
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_block_count(config.num_hidden_layers)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(n_head)
        writer.add_head_count_kv(n_kv)
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
        writer.add_rope_freq_base(float(rope_theta))
        writer.add_rope_dimension_count(head_dim)
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_vocab_size(config.vocab_size)
        writer.add_file_type(getattr(gguf.LlamaFileType, DTYPES[dtype][0]))
        tokenizer_metadata(writer, tokenizer, config.vocab_size)

        state = model.state_dict()
        tied = getattr(config, "tie_word_embeddings", False)
        for hf_name, tensor in state.items():
            if hf_name == "lm_head.weight" and tied:
                continue  # llama.cpp reuses token_embd when output.weight is absent
            name = tensor_name(hf_name)
            if name is None:
                continue
            data = tensor.detach().float().numpy()
            if name.endswith("attn_q.weight"):
                data = permute_rope(data, n_head)
            elif name.endswith("attn_k.weight"):
                data = permute_rope(data, n_kv)
            # Norms stay F32 as llama.cpp expects; matrices take the requested type (F16 where a row does
            # not split into the quantizer's blocks).
            qtype = getattr(gguf.GGMLQuantizationType, DTYPES[dtype][1])
            block = gguf.GGML_QUANT_SIZES[qtype][0]
            if data.ndim != 2 or qtype == gguf.GGMLQuantizationType.F32:
                writer.add_tensor(name, data.astype(np.float32))
            elif qtype == gguf.GGMLQuantizationType.F16 or data.shape[1] % block:
                writer.add_tensor(name, data.astype(np.float16), raw_dtype=gguf.GGMLQuantizationType.F16)
            else:
                writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        tmp.replace(out)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return out
