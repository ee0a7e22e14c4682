"""One side of a benchmark in its own process, driven round by round from the parent.

Two llama.cpp models driven from two threads of one process slow each other's decode steps about 2x on this
machine (libgomp spins less once more threads than cores have joined its teams), which no charbot process meets
(it runs one model). So each side of a comparison gets a process of its own, and the parent alternates rounds
between them: identical work, the same drift on both sides, no interference.

    side = await Side.start("charbot", gguf, threads)      # or "raw": llama-cpp-python's high-level Llama
    ttft, total, tokens, text = await side.run(prompt_text, token_ids, max_new_tokens)
    await side.stop()

Each round generates greedily with the end-of-generation tokens banned: exactly `max_new_tokens` tokens.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class Side:
    def __init__(self, process: asyncio.subprocess.Process, name: str):
        self.process = process
        self.name = name

    @classmethod
    async def start(cls, kind: str, gguf: Path, threads: int) -> Side:
        process = await asyncio.create_subprocess_exec(
            sys.executable, __file__, kind, str(gguf), str(threads),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=ROOT,
        )
        side = cls(process, kind)
        await side._read()  # "ready": the model is loaded and warmed
        return side

    async def _read(self) -> dict:
        line = await self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark side {self.name!r} exited with {await self.process.wait()}")
        return json.loads(line)

    async def run(self, text: str, tokens: list[int], max_new_tokens: int) -> tuple[float, float, int, str]:
        """One reply to the prompt `text` (which tokenizes to `tokens`): (prefill s, total s, tokens, text)."""
        self.process.stdin.write((json.dumps({"text": text, "tokens": tokens, "n": max_new_tokens}) + "\n").encode())
        await self.process.stdin.drain()
        r = await self._read()
        return r["ttft"], r["total"], r["tokens"], r["text"]

    async def stop(self) -> None:
        self.process.stdin.close()
        await self.process.wait()


# --- the child ---------------------------------------------------------------------------------------
def _say(**data) -> None:
    print(json.dumps(data), flush=True)


def _requests():
    for line in sys.stdin:
        r = json.loads(line)
        yield r["text"], r["tokens"], r["n"]


async def _charbot(gguf: str, threads: int) -> None:
    from charbot.backends.base import Prompt
    from charbot.backends.llamacpp import LlamaCppBackend
    from charbot.generation import GenerationSettings

    backend = LlamaCppBackend(gguf, context_window=2048, threads=threads)
    await backend.load()
    _say(ready=True)
    for text, tokens, n in _requests():
        prompt = Prompt(text=text)
        if backend.prompt_tokens(prompt) != tokens:
            raise SystemExit("charbot would read other tokens than the other side: not the same work")
        settings = GenerationSettings(max_new_tokens=n, do_sample=False, no_repeat_ngram_size=0, ignore_eos=True)
        start = time.perf_counter()
        first, out = None, ""
        async for piece in backend.stream(prompt, settings):
            first = first or time.perf_counter()
            out += piece
        _say(ttft=first - start, total=time.perf_counter() - start, tokens=n, text=out)


def _raw(gguf: str, threads: int) -> None:
    import llama_cpp
    from llama_cpp import Llama

    llm = Llama(gguf, n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    bias = {t: float("-inf") for t in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)}  # as ignore_eos does
    _say(ready=True)
    for _text, tokens, n in _requests():
        start = time.perf_counter()
        first, out = None, ""
        for chunk in llm.create_completion(prompt=tokens, max_tokens=n, temperature=0.0, repeat_penalty=1.0, logit_bias=bias, stream=True):
            first = first or time.perf_counter()
            out += chunk["choices"][0]["text"]
        _say(ttft=first - start, total=time.perf_counter() - start, tokens=n, text=out)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    kind, gguf, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if kind == "charbot":
        asyncio.run(_charbot(gguf, threads))
    else:
        _raw(gguf, threads)
