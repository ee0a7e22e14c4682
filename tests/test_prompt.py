import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from charbot.factory import sample_card_path
from charbot.memory import Turn
from charbot.persona import load_card, render
from charbot.prompt import DROP_CHUNK, MESSAGE_OVERHEAD, PromptBuilder


def words(text: str) -> int:
    return len(text.split())


def builder(budget_window: int, fmt="chat"):
    return PromptBuilder(words, context_window=budget_window, max_new_tokens=0, fmt=fmt, eos_token="<eos>")


def history(n: int) -> list[Turn]:
    turns = []
    for i in range(n):
        turns += [Turn("user", f"question number {i}", "Sam"), Turn("assistant", f"answer number {i}")]
    return turns


def test_everything_fits(sample_card):
    built = builder(4096).build(render(sample_card, "Sam"), history(3), "and now?", "Sam")
    msgs = built.prompt.messages
    assert msgs[0].role == "system" and "Example of how Orla talks" in msgs[0].content
    assert msgs[1].role == "assistant" and msgs[1].content.startswith("Orla: Mind the ninth step")  # the greeting
    assert [m.role for m in msgs[2:]] == ["user", "assistant"] * 3 + ["user"]
    assert msgs[2].content == "Sam: question number 0"  # speakers named so users can be told apart
    assert msgs[3].content == "Orla: answer number 0"  # ...and so is the character, in the same "Name: " form
    assert msgs[-1].content == "Sam: and now?"
    assert built.prompt.reply_prefix == "Orla:"  # the reply is begun as the character's line
    assert built.examples_kept and built.turns_kept == 6


def test_unnamed_chat_has_plain_turns_and_no_prefix(sample_card):
    turns = [Turn("user", "question number 0"), Turn("assistant", "answer number 0", "Orla")]
    built = builder(4096).build(render(sample_card, "you"), turns, "and now?", None)
    msgs = built.prompt.messages
    assert [m.content for m in msgs[2:]] == ["question number 0", "answer number 0", "and now?"]
    assert msgs[1].content.startswith("Mind the ninth step")
    assert built.prompt.reply_prefix == ""


def test_examples_dropped_before_turns(sample_card):
    persona = render(sample_card, "Sam")
    full = builder(4096).build(persona, history(3), "and now?", "Sam")
    examples_cost = words(persona.examples) + 2
    # exactly too small for the examples, enough for every turn
    tight = builder(full.prompt_tokens + 16 - 1)
    built = tight.build(persona, history(3), "and now?", "Sam")
    assert not built.examples_kept
    assert built.turns_kept == 6
    assert "Example of how" not in built.prompt.messages[0].content
    assert built.prompt.messages[1].content == "Sam: question number 0"  # greeting dropped with the examples
    assert examples_cost > 1


def prompt_cost(built) -> int:
    """What the prompt really costs under the test's counter: every message with its template markers, plus
    the generation prompt."""
    return sum(words(m.content) + MESSAGE_OVERHEAD for m in built.prompt.messages) + MESSAGE_OVERHEAD


@settings(max_examples=60, deadline=None)
@given(window=st.integers(min_value=40, max_value=400), turns=st.integers(min_value=0, max_value=30))
def test_prompt_fits_the_window_and_keeps_the_newest_turns(window, turns):
    persona = render(load_card(sample_card_path()), "Sam")
    past = history(turns // 2)
    budget = max(64, window - 16)
    built = builder(window).build(persona, past, "and now?", "Sam")
    msgs = built.prompt.messages
    assert prompt_cost(built) <= max(budget, prompt_cost(builder(0).build(persona, [], "and now?", "Sam")))
    assert msgs[-1].content == "Sam: and now?" and msgs[0].role == "system"
    kept = [m.content for m in msgs[1:-1] if m.content.startswith(("Sam: question", "Orla: answer"))]
    expected = [f"Sam: {t.content}" if t.role == "user" else f"Orla: {t.content}" for t in past]
    assert kept == expected[len(expected) - len(kept) :]  # a suffix: only the oldest were dropped
    assert built.turns_kept == len(kept)
    if 0 < built.turns_kept < len(past):
        # old turns go in chunks: the prompt starts at a chunk boundary, and no more than a chunk beyond what
        # the budget forces went (the next chunk of older turns would not have fitted)
        assert (len(past) - built.turns_kept) % DROP_CHUNK == 0
        older = expected[-len(kept) - DROP_CHUNK : -len(kept)]
        assert prompt_cost(built) + sum(words(t) + MESSAGE_OVERHEAD for t in older) > budget


def test_the_prompt_start_moves_a_chunk_at_a_time(sample_card):
    """As a conversation grows past the window, the first turn shown changes every few replies, not every reply:
    the prompt's start stays the same and a KV cache of the previous prompt keeps matching."""
    persona = render(sample_card, "Sam")
    starts = []
    for exchanges in range(10, 41):
        past = history(exchanges)
        built = builder(260).build(persona, past, "and now?", "Sam")
        starts.append(len(past) - built.turns_kept)
    assert starts == sorted(starts) and starts[-1] > starts[0] > 0  # the window was too small: turns went
    runs = [len(list(group)) for _, group in itertools.groupby(starts)]
    assert all(run >= DROP_CHUNK // 2 for run in runs[1:-1])  # each start held for several replies


def test_dialogpt_format_joins_turns_with_eos(sample_card):
    built = builder(4096, fmt="dialogpt").build(render(sample_card, "Sam"), history(1), "and now?", "Sam")
    # the same turns as chat models get (other speakers named, as `prepare` writes training data), joined by EOS
    assert built.prompt.text == "Sam: question number 0<eos>answer number 0<eos>Sam: and now?<eos>"
    assert not built.prompt.is_chat
