"""Saved KV states of prompts, so a conversation's next turn reads only its new tokens.

A state is the KV cells of one sequence after reading `tokens` (llama.cpp's `llama_state_seq_get_data`). A new
prompt restores the saved state that shares the longest start with it — exact token equality, never "close
enough" — and reads the rest. States are kept most-recently-used first under a byte budget; the least recently
used are dropped, or written to disk when a spill folder is set and read back from there on a later hit. One
cache belongs to one loaded model with one context size: the spill folder is keyed by a fingerprint of both, so a
changed model or setting never restores a state made for another.

Only the worker thread that owns the model touches a cache.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
from array import array
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from charbot.backends.base import of_conversation

MIN_TOKENS = 32  # shorter states cost more to keep track of than to read again


def as_array(tokens) -> np.ndarray:
    return np.asarray(tokens, dtype=np.int32)


def common_prefix(a, b) -> int:
    """Length of the longest common start of two token sequences (compared in one vectorised pass: a prompt
    is checked against every saved state at each admission)."""
    n = min(len(a), len(b))
    differ = np.flatnonzero(as_array(a[:n]) != as_array(b[:n]))
    return int(differ[0]) if differ.size else n


@dataclass
class Entry:
    tokens: tuple[int, ...]
    key: str | None  # the conversation it came from, so a reset can drop it
    nbytes: int
    data: mmap.mmap | bytearray | None = None  # in memory; None when spilled
    path: Path | None = None  # on disk
    array: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.array = as_array(self.tokens)


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    saved_tokens: int = 0  # prompt tokens not read again thanks to the cache
    evicted_bytes: int = 0
    spilled_bytes: int = 0
    stored_bytes: int = 0  # in memory now

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class PromptCache:
    budget_bytes: int
    spill_dir: Path | None = None
    spill_budget_bytes: int = 0
    fingerprint: str = ""
    entries: OrderedDict[tuple[int, ...], Entry] = field(default_factory=OrderedDict)  # least recently used first
    stats: CacheStats = field(default_factory=CacheStats)

    def __post_init__(self) -> None:
        if self.spill_dir is not None:
            self.spill_dir = Path(self.spill_dir) / self.fingerprint
            self.spill_dir.mkdir(parents=True, exist_ok=True)
            self._load_index()

    # --- lookups -------------------------------------------------------------------------------------
    def best(self, tokens: tuple[int, ...]) -> tuple[Entry | None, int]:
        """The entry sharing the longest start with `tokens`, and that length (capped below len(tokens): the
        last prompt token is always read, for its logits)."""
        best, shared = None, 0
        query = as_array(tokens)
        for entry in self.entries.values():
            n = common_prefix(query, entry.array)
            if n > shared:
                best, shared = entry, n
        return best, min(shared, len(tokens) - 1)

    def state(self, entry: Entry) -> mmap.mmap | bytearray:
        """The entry's saved state (read back from disk when spilled); marks it most recently used."""
        self.entries.move_to_end(entry.tokens)
        return entry.data if entry.data is not None else _read(entry.path)

    # --- changes -------------------------------------------------------------------------------------
    def put(self, tokens: tuple[int, ...], data: mmap.mmap | bytearray, key: str | None) -> None:
        if len(tokens) < MIN_TOKENS or (len(data) > self.budget_bytes and self.spill_dir is None):
            return
        # One state per key, a conversation's character (its newest: later prompts extend it), and none that is a start of this one
        # (this one gives every prompt at least as much).
        for old in [e for e in self.entries.values() if (key is not None and e.key == key) or tokens[: len(e.tokens)] == e.tokens]:
            del self.entries[old.tokens]
            self._discard(old)
        self.entries[tokens] = Entry(tokens, key, len(data), data=data)
        self.stats.stored_bytes += len(data)
        self._evict()

    def holds(self, tokens: tuple[int, ...]) -> bool:
        return tokens in self.entries

    def forget(self, conversation: str) -> int:
        """Drop every state made from `conversation` (each of its characters'); returns how many."""
        gone = [e for e in self.entries.values() if of_conversation(e.key, conversation)]
        for entry in gone:
            del self.entries[entry.tokens]
            self._discard(entry)
        return len(gone)

    def clear(self) -> None:
        for entry in list(self.entries.values()):
            self._discard(entry)
        self.entries.clear()

    def _discard(self, entry: Entry) -> None:
        if entry.data is not None:
            self.stats.stored_bytes -= entry.nbytes
        if entry.path is not None:
            entry.path.unlink(missing_ok=True)

    def _evict(self) -> None:
        """Least recently used out until the memory budget holds: to disk when spilling, else dropped."""
        for entry in list(self.entries.values()):
            if self.stats.stored_bytes <= self.budget_bytes:
                break
            if entry.data is None:
                continue
            self.stats.stored_bytes -= entry.nbytes
            self.stats.evicted_bytes += entry.nbytes
            if self.spill_dir is not None and entry.nbytes <= self.spill_budget_bytes:
                entry.path = _write(self.spill_dir, entry.tokens, entry.key, entry.data)
                entry.data = None
                self.stats.spilled_bytes += entry.nbytes
            else:
                del self.entries[entry.tokens]
        self._trim_disk()

    def _trim_disk(self) -> None:
        on_disk = [e for e in self.entries.values() if e.data is None]
        used = sum(e.nbytes for e in on_disk)
        for entry in on_disk:  # least recently used first
            if used <= self.spill_budget_bytes:
                break
            del self.entries[entry.tokens]
            entry.path.unlink(missing_ok=True)
            used -= entry.nbytes

    def _load_index(self) -> None:
        """States spilled by an earlier process for the same model and context: known, not yet read."""
        for path in sorted(self.spill_dir.glob("*.kv"), key=lambda p: p.stat().st_mtime):
            try:
                tokens, key, nbytes = _read_header(path)
            except (OSError, ValueError, struct.error):
                path.unlink(missing_ok=True)  # a torn write from a killed process
                continue
            self.entries[tokens] = Entry(tokens, key, nbytes, path=path)
        self._trim_disk()


# --- the spill file: magic, token count, key length, tokens (int32), key (utf-8), state bytes --------------
MAGIC = b"CBKV1"


def _write(folder: Path, tokens: tuple[int, ...], key: str | None, data) -> Path:
    name = hashlib.sha256(array("i", tokens).tobytes()).hexdigest()[:32] + ".kv"
    path, tmp = folder / name, folder / (name + f".{os.getpid()}.tmp")
    raw_key = (key or "").encode("utf-8")
    with tmp.open("wb") as f:
        f.write(MAGIC + struct.pack("<II", len(tokens), len(raw_key)))
        f.write(array("i", tokens).tobytes())
        f.write(raw_key)
        f.write(data)
    tmp.replace(path)  # never a half-written state under the real name
    return path


def _header(f) -> tuple[tuple[int, ...], str | None]:
    head = f.read(len(MAGIC) + 8)
    if not head.startswith(MAGIC) or len(head) < len(MAGIC) + 8:
        raise ValueError("not a charbot KV state")
    n, k = struct.unpack("<II", head[len(MAGIC):])
    tokens = array("i")
    tokens.frombytes(f.read(4 * n))
    if len(tokens) != n:
        raise ValueError("truncated")
    return tuple(tokens), f.read(k).decode("utf-8") or None


def _read_header(path: Path) -> tuple[tuple[int, ...], str | None, int]:
    with path.open("rb") as f:
        tokens, key = _header(f)
        return tokens, key, path.stat().st_size - f.tell()


def _read(path: Path) -> bytearray:
    with path.open("rb") as f:
        _header(f)
        return bytearray(f.read())
