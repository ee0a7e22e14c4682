from charbot.memory import Turn
from charbot.persona import render
from charbot.prompt import MESSAGE_OVERHEAD, PromptBuilder


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


def test_oldest_turns_dropped_when_short(sample_card):
    persona = render(sample_card, "Sam")
    turn_cost = words("Sam: question number 9") + MESSAGE_OVERHEAD
    fixed = words(persona.system) + MESSAGE_OVERHEAD + words("Sam: and now?") + 2 * MESSAGE_OVERHEAD
    built = builder(fixed + 3 * turn_cost + 16).build(persona, history(10), "and now?", "Sam")
    assert built.turns_kept == 3
    contents = [m.content for m in built.prompt.messages[1:]]
    assert contents[-1] == "Sam: and now?"
    assert "Orla: answer number 9" in contents  # the newest survive
    assert not any("number 0" in c for c in contents)


def test_dialogpt_format_joins_turns_with_eos(sample_card):
    built = builder(4096, fmt="dialogpt").build(render(sample_card, "Sam"), history(1), "and now?", "Sam")
    assert built.prompt.text == "question number 0<eos>answer number 0<eos>and now?<eos>"
    assert not built.prompt.is_chat
