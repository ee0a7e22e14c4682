"""`charbot eval`, top to bottom: test examples → for each model: perplexity, response selection, sampled
replies, the judge's score, diversity → markdown report + chart. Models: the base with and without the
persona, and each trained one. Everything is measured on the test split (`prepare --test-fraction`), which
neither training, early stopping nor a recipe search reads."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from charbot.errors import ConfigError
from charbot.eval import metrics
from charbot.eval.perplexity import response_perplexity
from charbot.eval.persona_score import JudgeQuality, PersonaClassifier, split_lines
from charbot.eval.selection import candidate_sets, response_selection
from charbot.dataset import Example, load_held_out, load_prepared
from charbot.generation import GenerationSettings, clean_reply
from charbot.rendering import Renderer

NAN = float("nan")
USER_PLACEHOLDER = "User"  # what {{user}} is in the examples `prepare` writes


@dataclass
class Candidate:
    label: str
    ref: str | None  # None: the embedded base model
    persona: bool = True
    named: bool | None = None  # "Rick: …" replies; None: as the model was trained (training_config.json), else unnamed


@dataclass
class Row:
    label: str
    model: str
    persona: bool
    named: bool
    perplexity: float
    in_character: float
    distinct_1: float
    distinct_2: float
    mean_words: float
    replies: list[list[str]] = field(default_factory=list)  # per test context, its sampled replies
    hits_at_1: float = NAN  # response selection, the real reply among 20 (selection.py)
    mrr: float = NAN
    loglik_hits_at_1: float = NAN  # ranked by the plain per-token log-likelihood (selection.py says why it is not the measure)
    judge_score: float = NAN  # the judge's mean score of the replies
    judge_ratio: float = NAN  # judge_score / the judge's mean score of the character's real replies to the same contexts
    max_new_tokens: int = 0  # the cap each reply was sampled under
    ranks: list[int] = field(default_factory=list)  # response selection: the real reply's rank per context (1 = first)

    @classmethod
    def scored(cls, label: str, model: str, persona: bool, named: bool, perplexity: float, replies: list[list[str]], judge,
               real_score: float = NAN) -> Row:
        flat = [r for per_context in replies for r in per_context]
        score = judge.mean_score(flat)
        return cls(label, model, persona, named, perplexity, judge.in_character(flat), metrics.distinct_by_round(replies, 1),
                   metrics.distinct_by_round(replies, 2), metrics.mean_length(flat), replies, judge_score=score,
                   judge_ratio=score / real_score if real_score and not math.isnan(real_score) else NAN)


@dataclass
class HeldOut:
    split: str  # the file scored: test, or val for data prepared before test splits existed
    examples: list  # all of it: the distractors of response selection come from the whole split
    note: str = ""


def held_out(data_dir: Path, split: str) -> HeldOut:
    examples = load_held_out(data_dir, split)
    if examples:
        return HeldOut(split, examples)
    if split == "test":
        val = load_held_out(data_dir, "val")
        if val:
            note = (f"{data_dir}/test.jsonl is missing or empty (data prepared before test splits, or --test-fraction 0): scoring "
                    "val.jsonl, which training may have used for early stopping and settings may have been tuned on; "
                    "re-run `charbot prepare` for a test split")
            return HeldOut("val", val, note)
    raise ConfigError(f"{data_dir}/{split}.jsonl is missing or empty", "run `charbot prepare` with --test-fraction (and --val-fraction) above 0")


def load(ref: str | None):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from charbot.models import resolve_base

    path = resolve_base(ref)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), tok, path


def trained_named(path) -> bool:
    """Whether a `charbot train` output was trained with named replies (--name-replies)."""
    config = Path(path) / "training_config.json"
    return config.is_file() and bool(json.loads(config.read_text(encoding="utf-8")).get("name_replies"))


def generate(model, tok, renderer: Renderer, messages: list[dict], settings: GenerationSettings, character: str, user_names: tuple[str, ...],
             named: bool = False, seed: int = 0, samples: int = 1) -> list[str]:
    """Replies to an example's context, rendered exactly as serving would send it (names and reply prefix too)."""
    import torch

    text = renderer.prompt(messages, character if named else None)
    ids = tok(text, return_tensors="pt", add_special_tokens=False)
    torch.manual_seed(seed)
    sampling = settings.do_sample and settings.temperature > 0  # temperature 0 is greedy, as in the llama.cpp backend
    sampler = dict(temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p) if sampling else {}
    with torch.inference_mode():
        out = model.generate(
            **ids, max_new_tokens=settings.max_new_tokens, do_sample=sampling, **sampler,
            no_repeat_ngram_size=settings.no_repeat_ngram_size or None, repetition_penalty=settings.repetition_penalty,
            pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
            num_return_sequences=samples if sampling else 1,  # one batched call: several draws cost little more than one on CPU
        )
    raws = tok.batch_decode(out[:, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    return [clean_reply(raw, char=character, user_names=user_names) for raw in raws]


def with_card(examples: list[Example], card, count_tokens, max_new_tokens: int, context_window: int = 2048) -> list[Example]:
    """Each held-out example with the persona that chat and Discord would send for `card` in place of the system
    message `prepare` wrote: the card's text and the lorebook entries its context fires, the example dialogue
    and greeting, then the example's own turns (as much of them as the context window holds)."""
    from charbot.prompt import card_prompt
    from charbot.memory import Turn
    from charbot.prompt import PromptBuilder

    builder = PromptBuilder(count_tokens, context_window=context_window, max_new_tokens=max_new_tokens, fmt="chat")
    out = []
    for ex in examples:
        context = [m for m in ex.messages[:-1] if m["role"] != "system"]
        history = [Turn(m["role"], m["content"]) for m in context[:-1]]
        built = card_prompt(builder, card, USER_PLACEHOLDER, history, context[-1]["content"], None)
        messages = [{"role": m.role, "content": m.content} for m in built.prompt.messages] + [ex.messages[-1]]
        out.append(Example(messages, ex.episode, ex.speaker))
    return out


def longest_reply(tok, examples: list[Example]) -> int:
    """Tokens in the longest real reply, its end-of-turn marker included."""
    return 1 + max(len(tok(ex.messages[-1]["content"], add_special_tokens=False)["input_ids"]) for ex in examples)


def evaluate(data_dir: Path, out_dir: Path, candidates: list[Candidate], *, limit: int = 40, max_new_tokens: int | None = None, seed: int = 0,
             samples: int = 1, split: str = "test", progress=None, card=None, selection: bool = True,
             sampler: GenerationSettings | None = None) -> list[Row]:
    """`card`: the persona rows use it as chat sends it (`with_card`) instead of the system message in the data.
    `sampler`: how replies are drawn (the user's generation settings; default the tutorial's). `max_new_tokens`:
    the cap on a reply; by default the longest real reply among the scored contexts, so that no generated reply
    is cut shorter than one the character said (a lower cap would fail a perfect model on length)."""
    train, _, _ = load_prepared(data_dir)
    scored = held_out(data_dir, split)
    if scored.note:
        print(f"note: {scored.note}", file=sys.stderr)
    contexts = scored.examples[:limit]
    speaker = contexts[0].speaker or None
    character = speaker or "the character"
    names = tuple(sorted({line.partition(": ")[0] for ex in train for m in ex.messages if m["role"] == "user" for line in m["content"].splitlines() if ": " in line}))
    judge = PersonaClassifier.fit(train, seed=seed, character=speaker)
    quality = judge.quality(*split_lines(scored.examples, speaker))
    real = [[ex.messages[-1]["content"]] for ex in contexts]
    real_score = judge.mean_score([r for [r] in real])  # the ratio's yardstick: the real replies to the same contexts
    choices = candidate_sets(contexts, seed=seed, pool=scored.examples)  # the same candidates for every model
    sampler = sampler or GenerationSettings()
    rows: list[Row] = []
    loaded: dict = {}
    for cand in candidates:
        if cand.ref not in loaded:
            loaded = {cand.ref: load(cand.ref)}  # one model in memory at a time
        model, tok, path = loaded[cand.ref]
        settings = sampler.but(max_new_tokens=max_new_tokens or longest_reply(tok, contexts), seed=seed)
        renderer = Renderer.for_tokenizer(tok)
        named = (trained_named(path) if cand.named is None else cand.named) and renderer.fmt == "chat"
        examples = contexts
        if card is not None and cand.persona and renderer.fmt == "chat":
            examples = with_card(contexts, card, lambda text: len(tok(text, add_special_tokens=False)["input_ids"]), settings.max_new_tokens)
        ppl = response_perplexity(model, tok, renderer, examples, persona=cand.persona, named=named)
        ranked = response_selection(model, tok, renderer, examples, persona=cand.persona, named=named, sets=choices) if selection else None
        replies = []
        for i, ex in enumerate(examples):
            msgs = [m for m in ex.messages if cand.persona or m["role"] != "system"]
            # every model gets the same seed for the same context, and each context its own: one seed for all
            # would give every reply the same random draws and make the replies of one model alike
            replies.append(generate(model, tok, renderer, msgs, settings, character, names, named, seed=seed + i, samples=samples))
            if progress:
                progress(cand.label, i + 1, len(contexts))
        row = Row.scored(cand.label, cand.ref or "embedded SmolLM2-135M-Instruct", cand.persona, named, ppl, replies, judge, real_score)
        if ranked is not None:
            row.hits_at_1, row.mrr, row.loglik_hits_at_1, row.ranks = ranked.hits_at_1, ranked.mrr, ranked.loglik_hits_at_1, ranked.ranks
        row.max_new_tokens = settings.max_new_tokens
        rows.append(row)
    # The judge's own yardsticks on the test split: the character's real lines (ratio 1 by definition), and
    # the other speakers' lines it would mistake for the character's.
    references = [Row.scored("real lines (reference)", "script", True, False, NAN, real, judge, real_score)]
    _, others = split_lines(contexts, speaker)
    if others:
        references.append(Row.scored("other speakers (reference)", "script", True, False, NAN, [[line] for line in others], judge, real_score))
    write_report(out_dir, character, contexts, rows, references, quality, scored, sampler)
    return rows


def write_report(out_dir: Path, character: str, examples, rows: list[Row], references: list[Row], quality: JudgeQuality, scored: HeldOut,
                 sampler: GenerationSettings) -> None:
    from charbot.eval.report import chart, markdown

    out_dir.mkdir(parents=True, exist_ok=True)
    chart(rows, references, out_dir / "comparison.png", character)
    (out_dir / "report.md").write_text(markdown(character, examples, rows, references, quality, scored, sampler), encoding="utf-8")
    drawn = sampler.model_dump(include={"do_sample", "temperature", "top_k", "top_p", "no_repeat_ngram_size", "repetition_penalty"})
    results = {"split": scored.split, "note": scored.note, "contexts": len(examples), "judge": asdict(quality), "sampler": drawn,
               "models": [asdict(r) for r in rows + references]}
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
