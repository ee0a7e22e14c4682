"""Response selection (hits@1/20, MRR): a model that memorised the test replies scores 1.0, a random one
about 0.05, and the distractors come from elsewhere in the test split."""

from __future__ import annotations

import random

import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.torch

from charbot.dataset import load_jsonl  # noqa: E402
from charbot.eval.selection import NEAR_ROWS, candidate_sets, rank_of_first, response_selection, summarise  # noqa: E402
from train_support import make_tiny_base  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import torch

    from charbot.factory import sample_script_path
    from charbot.prepare import prepare

    torch.set_num_threads(1)  # a tiny model on a shared machine: more threads only wait on one another
    root = tmp_path_factory.mktemp("selection")
    prepare(sample_script_path(), "Orla", root / "data", val_fraction=0.1, test_fraction=0.5)
    test = load_jsonl(root / "data" / "test.jsonl")
    assert len(test) >= 30
    return test, make_tiny_base(root / "base")


def test_candidates_are_the_real_reply_and_19_lines_from_elsewhere(setup):
    test, _ = setup
    sets = candidate_sets(test, seed=0)
    assert sets == candidate_sets(test, seed=0) and sets != candidate_sets(test, seed=1)
    by_reply = {ex.messages[-1]["content"]: ex for ex in test}
    for ex, cands in zip(test, sets):
        assert cands[0] == ex.messages[-1]["content"] and len(cands) == len(set(cands)) == 20
        for c in cands[1:]:
            other = by_reply.get(c)
            assert other is not None  # enough of Orla's own test replies: no other speaker's line needed
            assert other.episode != ex.episode or abs(other.source_line - ex.source_line) > NEAR_ROWS


class Memorised:
    """A language model that learned the test examples by heart: after any prefix of one of them it puts all
    its probability on that example's next token, and is uniform elsewhere."""

    def __init__(self, sequences: list[list[int]], vocab: int):
        self.next = {}
        for seq in sequences:
            for t in range(len(seq) - 1):
                self.next.setdefault(tuple(seq[: t + 1]), seq[t + 1])
        self.vocab = vocab

    def eval(self):
        return self

    def __call__(self, input_ids, attention_mask=None, past_key_values=None, use_cache=False, logits_to_keep=0):
        import torch

        start = past_key_values.ids if past_key_values is not None else []  # what was read before, as a cache holds it
        logits = torch.zeros(*input_ids.shape, self.vocab)
        for b, row in enumerate(input_ids.tolist()):
            for t in range(len(row)):
                token = self.next.get(tuple(start + row[: t + 1]))
                if token is not None:
                    logits[b, t, token] = 30.0
        return type("Out", (), {"logits": logits, "past_key_values": _Read(input_ids[0].tolist()) if use_cache else None})()


class _Read:
    """The fake's cache: the tokens read, the same for every row."""

    def __init__(self, ids: list[int]):
        self.ids = ids

    def batch_repeat_interleave(self, n: int) -> None:
        pass


def test_the_shared_context_read_once_gives_the_scores_of_whole_rows(setup):
    """The candidates' context is read once and only the replies after it: the same log-likelihoods as
    scoring each candidate's whole row on its own (a real model, real tokenizer and chat template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from charbot.dataset import IGNORE, encode
    from charbot.eval.selection import mean_logprobs
    from charbot.rendering import Renderer

    test, base = setup
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base).eval()
    renderer = Renderer.for_tokenizer(tok)
    for ex, replies in list(zip(test, candidate_sets(test)))[:3]:
        # every candidate starts with the same words: the shared tokens run into the replies, which are scored
        replies = [f"Aye, sprat. {r}" for r in replies[:5]]
        fast = mean_logprobs(model, tok, renderer, ex.messages, replies)
        whole = []
        for reply in replies:
            ids, labels = encode(tok, renderer, [*ex.messages[:-1], {"role": "assistant", "content": reply}], last_only=True)
            with torch.inference_mode():
                logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1].float(), -1)
            scored = [logp[i - 1, t].item() for i, t in enumerate(labels) if t != IGNORE]
            whole.append(sum(scored) / len(scored))
        assert fast == pytest.approx(whole, abs=1e-4)


def test_a_model_that_memorised_the_test_replies_ranks_each_first(setup):
    from transformers import AutoTokenizer

    from charbot.dataset import encode
    from charbot.rendering import Renderer

    test, base = setup
    tok = AutoTokenizer.from_pretrained(base)
    renderer = Renderer.for_tokenizer(tok)
    model = Memorised([encode(tok, renderer, ex.messages, last_only=True)[0] for ex in test], len(tok))
    result = response_selection(model, tok, renderer, test)
    assert result.hits_at_1 == 1.0 and result.mrr == 1.0 and result.contexts == len(test) and result.candidates == 20
    # the same model shown another context's reply as the real one gets no credit
    shifted = [[s[1], s[0], *s[2:]] for s in candidate_sets(test)]
    assert response_selection(model, tok, renderer, test, sets=shifted).hits_at_1 == 0.0


class Bigram:
    """A model that never reads the context: each next token depends on the current one only, and it has
    learned one catchphrase, likely anywhere."""

    def __init__(self, phrase: list[int], vocab: int):
        self.next = dict(zip(phrase, phrase[1:]))
        self.vocab = vocab

    def eval(self):
        return self

    def __call__(self, input_ids, attention_mask=None, past_key_values=None, use_cache=False, logits_to_keep=0):
        import torch

        logits = torch.zeros(*input_ids.shape, self.vocab)
        for b, row in enumerate(input_ids.tolist()):
            for t, token in enumerate(row):
                if token in self.next:
                    logits[b, t, self.next[token]] = 30.0
        return type("Out", (), {"logits": logits, "past_key_values": _Read(input_ids[0].tolist()) if use_cache else None})()


def test_a_line_likely_anywhere_wins_the_plain_likelihood_but_not_the_measure(setup):
    """The measure is what the context adds: a model that ignores the context ties every candidate (no credit),
    though by the plain per-token likelihood its catchphrase, put among each context's distractors, wins."""
    from transformers import AutoTokenizer

    from charbot.dataset import encode
    from charbot.rendering import Renderer

    test, base = setup
    tok = AutoTokenizer.from_pretrained(base)
    renderer = Renderer.for_tokenizer(tok)
    phrase = "Nets up, lads!"
    model = Bigram(encode(tok, renderer, [{"role": "user", "content": "x"}, {"role": "assistant", "content": phrase}])[0], len(tok))
    sets = [[s[0], phrase, *s[2:]] for s in candidate_sets(test)]
    result = response_selection(model, tok, renderer, test, sets=sets)
    assert result.hits_at_1 == 0.0 and result.mrr == pytest.approx(1 / 20)  # all tied: last
    assert result.loglik_hits_at_1 == 0.0  # the catchphrase ranked above the real reply
    moved = response_selection(model, tok, renderer, test, sets=[[phrase, s[0], *s[2:]] for s in sets])
    assert moved.loglik_hits_at_1 == 1.0 and moved.hits_at_1 == 0.0  # the catchphrase as "the real reply": plain likelihood credits it


def test_a_random_model_is_near_chance(setup):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from charbot.rendering import Renderer

    test, base = setup
    tok = AutoTokenizer.from_pretrained(base)
    result = response_selection(AutoModelForCausalLM.from_pretrained(base), tok, Renderer.for_tokenizer(tok), test)
    assert result.hits_at_1 <= 0.2 and result.mrr < 0.4  # chance: 0.05 and about 0.18 (mean of 1/k, k = 1..20)
    rng = random.Random(0)
    chance = summarise([rank_of_first([rng.random() for _ in range(20)]) for _ in range(4000)], 20)
    assert chance.hits_at_1 == pytest.approx(0.05, abs=0.01) and chance.mrr == pytest.approx(sum(1 / k for k in range(1, 21)) / 20, abs=0.01)


def test_ties_give_the_real_reply_no_credit():
    assert rank_of_first([1.0] * 20) == 20 and rank_of_first([2.0, 1.0, 1.0]) == 1 and rank_of_first([1.0, 2.0, 0.0]) == 2
