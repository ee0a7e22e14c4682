"""Where the base model comes from: the embedded SmolLM2 GGUF (dequantised once and cached), a directory, or a hub id.

Parsing and dequantising the GGUF takes ~30 s; the converted safetensors copy loads in ~3 s, so it is kept in
the user cache keyed by file name, size and mtime (a replaced file gets a fresh conversion).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from platformdirs import user_cache_dir

from charbot.errors import ModelError
from charbot.models import embedded_model_path


def cache_root() -> Path:
    return Path(os.environ.get("CHARBOT_CACHE_DIR") or user_cache_dir("charbot", appauthor=False)) / "converted"


def _cache_key(gguf: Path) -> str:
    st = gguf.stat()
    return f"{gguf.stem}-{st.st_size}-{int(st.st_mtime)}"


def make_saveable(model) -> None:
    """transformers marks a GGUF-loaded model as quantized (and refuses to save it); after dequantisation it is plain."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def convert_gguf(gguf: Path) -> Path:
    """Dequantise `gguf` into an HF directory in the cache (once) and return that directory."""
    target = cache_root() / _cache_key(gguf)
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except (OSError, ValueError) as exc:
        raise ModelError(f"could not read GGUF {gguf}: {str(exc).splitlines()[0]}", "pass an HF model directory or hub id with --base-model") from None
    make_saveable(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename, so an interrupted conversion never looks finished.
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race; theirs is as good as ours
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def resolve_base(ref: str | None) -> str:
    """An HF directory or hub id for `ref`; None means the embedded SmolLM2-135M-Instruct."""
    if ref is None or ref == "embedded":
        return str(convert_gguf(embedded_model_path()))
    path = Path(ref).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"base model {path} not found", "check --base-model")
        return str(convert_gguf(path))
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"base model directory {path} has no config.json", "pass an HF model directory, a .gguf file or a hub id")
        return str(path)
    return ref  # a hub id; from_pretrained says if it cannot be fetched
