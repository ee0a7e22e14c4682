"""charbot eval: diversity metrics, reply perplexity, the persona judge, and the report, on tiny models."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.torch

from charbot.eval.metrics import distinct_by_round, distinct_n, mean_length, ratio_interval  # noqa: E402
from charbot.dataset import load_jsonl  # noqa: E402
from train_support import make_prepared, make_tiny_base  # noqa: E402


def test_distinct_n_counts_unique_ngrams_across_replies():
    replies = ["aye sprat aye", "aye sprat"]
    assert distinct_n(replies, 1) == pytest.approx(2 / 5)
    assert distinct_n(replies, 2) == pytest.approx(2 / 3)  # (aye sprat), (sprat aye), (aye sprat)
    assert distinct_n([], 2) == 0.0
    assert mean_length(["Aye, sprat.", "Kettle's on"]) == pytest.approx((4 + 2) / 2)


def test_distinct_n_of_several_draws_is_taken_per_round():
    # two contexts, two draws each: every round is all-distinct, though each context repeats itself
    replies = [["aye sprat", "aye sprat"], ["kettle on", "kettle on"]]
    assert distinct_by_round(replies, 1) == pytest.approx(1.0)
    assert distinct_n([r for per_context in replies for r in per_context], 1) == pytest.approx(0.5)
    assert distinct_by_round([["aye aye"]], 1) == pytest.approx(0.5)
    assert distinct_by_round([], 2) == 0.0


def test_the_hits_ratio_interval_says_when_forty_contexts_cannot_tell_a_ratio():
    base = [i < 6 for i in range(40)]  # 6 hits in 40, as the base scores on Rick's test episode
    assert ratio_interval(base, base) == (1.0, 1.0)
    low, high = ratio_interval(base, [i < 12 for i in range(40)])  # twice the hits, on the same contexts and more
    assert 1.0 < low < 2.0 < high
    low, high = ratio_interval(base, [i < 9 for i in range(40)])  # 1.5x: 3 hits more
    assert low <= 1.0 < 1.5 < high  # not told apart from no gain
    assert ratio_interval(base, base[:10]) == pytest.approx((float("nan"),) * 2, nan_ok=True)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    return make_prepared(root / "data"), make_tiny_base(root / "base"), root


def test_perplexity_falls_after_training_on_the_character(setup):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from charbot.eval.perplexity import response_perplexity
    from charbot.rendering import Renderer
    from charbot.train.config import TrainConfig
    from charbot.train.loop import train

    data, base, root = setup
    val = load_jsonl(data / "val.jsonl")
    tok = AutoTokenizer.from_pretrained(base)
    before = response_perplexity(AutoModelForCausalLM.from_pretrained(base), tok, Renderer.for_tokenizer(tok), val)
    assert before > 100  # a random model is close to uniform over its ~400 tokens
    out = train(TrainConfig(data=data, output_dir=root / "ft", base_model=str(base), max_steps=30, learning_rate=3e-3,
                            batch_size=4, eval_steps=0, progress=False, threads=1)).output_dir
    after = response_perplexity(AutoModelForCausalLM.from_pretrained(out), tok, Renderer.for_tokenizer(tok), val)
    assert after < before * 0.7


def test_persona_judge_tells_the_character_from_others(setup):
    from charbot.eval.persona_score import PersonaClassifier, split_lines

    data, _, _ = setup
    train = load_jsonl(data / "train.jsonl")
    own, other = split_lines(train)
    assert own and other and not set(own) & set(other)
    judge = PersonaClassifier.fit(train)
    # On its own training lines a linear judge on sentence embeddings should be clearly better than chance.
    assert judge.in_character(own) > 0.6
    assert judge.in_character(other) < 0.4


def test_persona_judge_learns_only_the_character_when_the_cast_is_in_train(tmp_path):
    from charbot.eval.persona_score import split_lines
    from charbot.factory import sample_script_path
    from charbot.prepare import prepare

    prepare(sample_script_path(), "Orla", tmp_path / "plain")
    prepare(sample_script_path(), "Orla", tmp_path / "cast", cast=1)
    plain = load_jsonl(tmp_path / "plain" / "train.jsonl")
    cast = load_jsonl(tmp_path / "cast" / "train.jsonl")
    own_plain, other_plain = split_lines(plain, "Orla")
    own, other = split_lines(cast, "Orla")
    assert own == own_plain  # the other speakers' examples add nothing to "Orla"
    pip = {ex.messages[-1]["content"] for ex in cast if ex.speaker == "Pip"}
    assert pip and pip <= set(other) and not pip & set(own)
    assert len(other) > len(other_plain)


def test_eval_writes_a_report_comparing_models(setup, tmp_path, capsys):
    from charbot.eval.run import Candidate, evaluate

    data, base, root = setup  # prepared before test splits: no test.jsonl, so val.jsonl is scored, with a note
    rows = evaluate(data, tmp_path / "report", [Candidate("base", str(base), persona=False), Candidate("base + persona", str(base)),
                                                Candidate("named", str(base), named=True)],
                    limit=3, max_new_tokens=6, samples=2)
    assert "test.jsonl is missing or empty" in capsys.readouterr().err
    assert [r.label for r in rows] == ["base", "base + persona", "named"]
    assert all([len(per_context) for per_context in r.replies] == [2, 2, 2] and r.perplexity > 1 for r in rows)
    # two draws per context, each from its own point in the sampling stream: a random model does not repeat itself
    assert all(len(set(per_context)) == 2 for per_context in rows[0].replies)
    assert rows[2].named and not rows[1].named and rows[2].perplexity != rows[1].perplexity
    assert all(0 <= r.hits_at_1 <= 1 and 0 < r.mrr <= 1 and r.judge_ratio > 0 for r in rows)
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| base + persona | yes | no |" in report and "| named | yes | yes |" in report and "2 sampled replies per context" in report
    assert "| real lines (reference) |" in report and "| other speakers (reference) |" in report
    assert "**Note**" in report and "val.jsonl" in report and "ROC-AUC" in report and "paired bootstrap" in report
    assert (tmp_path / "report" / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    assert {r["label"] for r in results["models"]} == {"base", "base + persona", "named", "real lines (reference)", "other speakers (reference)"}
    assert results["split"] == "val" and 0 <= results["judge"]["auc"] <= 1
    assert [r["judge_ratio"] for r in results["models"] if r["label"] == "real lines (reference)"] == [pytest.approx(1.0)]


def test_eval_scores_the_test_split_by_default(tmp_path, capsys):
    from charbot.eval.run import Candidate, evaluate

    data = make_prepared(tmp_path / "data", test_episodes=1)
    base = make_tiny_base(tmp_path / "base")
    test = load_jsonl(data / "test.jsonl")
    rows = evaluate(data, tmp_path / "report", [Candidate("base", str(base))], limit=2, max_new_tokens=4)
    assert "note:" not in capsys.readouterr().err
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    assert results["split"] == "test" and results["contexts"] == 2 and rows[0].replies
    report = (tmp_path / "report" / "report.md").read_text()
    assert "the test split (test.jsonl)" in report and "**Note**" not in report
    assert f"### 1. {test[0].episode}" in report and test[0].messages[-1]["content"] in report  # the real line, next to the replies


def test_judge_auc_is_near_one_on_separable_speakers_and_near_half_on_alike_ones():
    import random

    from charbot.dataset import Example
    from charbot.eval.persona_score import PersonaClassifier, roc_auc

    rng = random.Random(0)
    sea = ["Aye, the {} is rolling in off the {} again.", "Batten the {} before the {} turns.", "Mind the {}, the {} bites at night."]
    sea_words = ["fog", "tide", "gulls", "lamp", "hull", "harbour", "storm", "rope"]
    desk = ["Please file the {} report before the {} meeting.", "The {} budget needs sign-off from {} finance.",
            "Our quarterly {} review moved to the {} calendar slot."]
    desk_words = ["expense", "compliance", "audit", "payroll", "vendor", "licence", "invoice", "travel"]

    def lines(templates, words, n):
        return [rng.choice(templates).format(rng.choice(words), rng.choice(words)) for _ in range(n)]

    def examples(own, other):
        return [Example([{"role": "system", "content": "You are Orla."}, {"role": "user", "content": f"Pip: {o}"},
                         {"role": "assistant", "content": m}], "ep", "Orla") for m, o in zip(own, other)]

    train_sea, train_desk = lines(sea, sea_words, 40), lines(desk, desk_words, 40)
    judge = PersonaClassifier.fit(examples(train_sea, train_desk), character="Orla")
    apart = judge.quality(lines(sea, sea_words, 20), lines(desk, desk_words, 20))
    assert apart.auc > 0.95 and apart.accepts_real > 0.8 and apart.accepts_others < 0.2
    # the same measure on two speakers who talk alike: no better than a coin, so a near-1 AUC above is earned
    mixed = lines(sea + desk, sea_words + desk_words, 120)
    alike = PersonaClassifier.fit(examples(mixed[:40], mixed[40:80]), character="Orla").quality(mixed[80:100], mixed[100:])
    assert 0.25 < alike.auc < 0.75
    assert roc_auc([3, 4], [1, 2]) == 1.0 and roc_auc([1, 2], [3, 4]) == 0.0 and roc_auc([1, 2], [1, 2]) == 0.5


def test_targets_fail_a_catchphrase_model_that_the_judge_likes():
    from charbot.eval.report import targets
    from charbot.eval.run import Row

    def row(label, persona, ppl, hits, ratio, d2, words):
        return Row(label, "m", persona, False, ppl, 0.5, 0.5, d2, words, hits_at_1=hits, judge_ratio=ratio)

    base = row("base", False, 30.0, 0.10, 0.6, 0.9, 12.0)
    real = row("real lines (reference)", True, float("nan"), float("nan"), 1.0, 0.89, 12.0)
    good = row("good", True, 16.0, 0.25, 1.05, 0.8, 10.0)
    catchphrase = row("oh man", True, 16.0, 0.25, 1.3, 0.3, 2.0)  # judged more in character than the real lines
    table = "\n".join(targets([base, good, catchphrase], [real]))
    assert "| good | 47% below | 2.5× | 1.05 | 0.90× | 0.83× | yes |" in table
    assert "| oh man |" in table and table.splitlines()[-1].endswith("| no |") and "0.34× ✗" in table and "0.17× ✗" in table


def test_named_reply_perplexity_scores_the_line_not_the_name():
    from charbot.dataset import IGNORE, encode
    from charbot.rendering import Renderer
    from train_support import make_tokenizer

    tok = make_tokenizer()
    msgs = [{"role": "user", "content": "Pip: Fog again?"}, {"role": "assistant", "content": "Aye."},
            {"role": "user", "content": "Pip: And the bell?"}, {"role": "assistant", "content": "Rung twice."}]
    ids, labels = encode(tok, Renderer.for_tokenizer(tok, "chat"), msgs, last_only=True, speaker="Orla")
    assert "assistant\nOrla: Aye.<|im_end|>" in tok.decode(ids) and tok.decode(ids).count("Orla:") == 2
    assert tok.decode([i for i, lab in zip(ids, labels) if lab != IGNORE]) == " Rung twice.<|im_end|>\n"


def test_eval_cli_rejects_a_bad_model_spec(setup, capsys):
    from charbot.cli import main

    data, _, _ = setup
    with pytest.raises(SystemExit) as exc:
        main(["eval", str(data), "--model", "no-equals-sign"])
    assert exc.value.code != 0
    assert "LABEL=PATH_OR_HUB_ID" in capsys.readouterr().err


def test_eval_cli_rejects_zero_samples(setup, capsys):
    from charbot.cli import main

    data, _, _ = setup
    with pytest.raises(SystemExit) as exc:
        main(["eval", str(data), "--samples", "0"])
    assert exc.value.code != 0
    err = capsys.readouterr().err
    assert "--samples must be at least 1" in err and "Traceback" not in err


def test_eval_cli_without_selection_scores_the_rest(setup, tmp_path, capsys):
    from charbot.cli import main

    data, base, _ = setup
    with pytest.raises(SystemExit) as exc:
        main(["eval", str(data), "--base", str(base), "--limit", "2", "--max-new-tokens", "4", "--samples", "1", "--no-selection",
              "-o", str(tmp_path / "r")])
    assert exc.value.code in (0, None)
    rows = json.loads((tmp_path / "r" / "results.json").read_text())["models"]
    base_rows = [r for r in rows if r["label"].startswith("base")]
    assert len(base_rows) == 2 and all(r["perplexity"] > 1 and r["hits_at_1"] != r["hits_at_1"] for r in base_rows)  # NaN: not ranked
    report = (tmp_path / "r" / "report.md").read_text()
    assert "| base | no | no |" in report and "| base + persona | " in report and "not ranked" in report and "not ranked ✗" not in report


def test_eval_draws_replies_as_the_settings_say_capped_at_the_longest_real_reply(tmp_path, monkeypatch):
    """The sampler is the user's (flags, CHARBOT_*, charbot.toml, as chat takes them); the default cap lets a reply
    be as long as the longest real one, so a model that talks at the character's length is not cut short."""
    from transformers import AutoTokenizer

    from charbot.cli import main
    from charbot.eval.run import longest_reply

    data = make_prepared(tmp_path / "data", test_episodes=1)
    base = make_tiny_base(tmp_path / "base")
    cap = longest_reply(AutoTokenizer.from_pretrained(base), load_jsonl(data / "test.jsonl")[:2])
    monkeypatch.setenv("CHARBOT_TOP_K", "7")

    def run(out: str, *flags: str) -> dict:
        with pytest.raises(SystemExit) as exc:
            main(["eval", str(data), "--base", str(base), "--limit", "2", "--samples", "2", "--no-selection", "-o", str(tmp_path / out), *flags])
        assert exc.value.code in (0, None)
        return json.loads((tmp_path / out / "results.json").read_text())

    greedy = [run(f"greedy{seed}", "--temperature", "0", "--seed", str(seed)) for seed in (0, 1)]
    replies = [[r["replies"] for r in g["models"][:2]] for g in greedy]
    assert replies[0] == replies[1]  # greedy: the seed changes nothing
    sampled = run("sampled", "--temperature", "1.0", "--top-p", "1.0")
    assert sampled["sampler"]["top_k"] == 7 and sampled["sampler"]["temperature"] == 1.0  # the environment's, and the flags'
    assert all(r["max_new_tokens"] == cap for r in sampled["models"][:2])
    assert f"at most {cap} tokens per reply" in (tmp_path / "sampled" / "report.md").read_text()
    capped = run("capped", "--max-new-tokens", "3")
    assert all(r["max_new_tokens"] == 3 for r in capped["models"][:2])


def test_eval_with_a_card_sends_what_chat_would(setup, tmp_path):
    """--persona CARD: the persona rows get the card as chat renders it (text, fired lore, examples, greeting)
    in place of val.jsonl's system message; the reference reply and the context stay the same."""
    from card_files import wren
    from charbot.eval.run import Candidate, evaluate, with_card
    from charbot.persona import parse_card

    data, base, _ = setup
    card = parse_card(wren(2))
    val = load_jsonl(data / "val.jsonl")
    val[0].messages[-2]["content"] += " Is the Heron yours?"
    shown = with_card(val, card, lambda t: len(t.split()), max_new_tokens=40)
    first = shown[0].messages
    assert first[0]["role"] == "system" and first[0]["content"].startswith("You are Wren.")
    assert "The Heron is Wren's narrowboat" in first[0]["content"] and "Example of how Wren talks:" in first[0]["content"]
    assert first[1] == {"role": "assistant", "content": "Tie up on the left, the right bollard's loose."}  # the greeting
    assert first[2:] == val[0].messages[1:]  # then the example's own turns, its reply last
    assert all("narrowboat" not in ex.messages[0]["content"] for ex in shown[1:])  # lore only where the context names it
    rows = evaluate(data, tmp_path / "report", [Candidate("base", str(base), persona=False), Candidate("base + persona", str(base))],
                    limit=2, max_new_tokens=4, samples=1, card=card)
    plain = evaluate(data, tmp_path / "plain", [Candidate("base + persona", str(base))], limit=2, max_new_tokens=4, samples=1)
    assert rows[1].perplexity != plain[0].perplexity and rows[0].perplexity > 1
