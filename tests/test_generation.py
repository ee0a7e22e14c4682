from charbot.generation import GenerationSettings, NoRepeatNGram, clean_reply, is_usable, trim_to_sentence


def test_defaults_are_the_tutorials():
    s = GenerationSettings()
    assert (s.do_sample, s.top_k, s.top_p, s.temperature, s.no_repeat_ngram_size) == (True, 100, 0.7, 0.8, 3)
    assert s.max_new_tokens > 0


def test_clean_reply_stops_at_next_turn_and_strips_own_name():
    raw = "Orla: Aye, the kettle's on.\nSam: thanks\nOrla: more"
    assert clean_reply(raw, char="Orla", user_names=("Sam",)) == "Aye, the kettle's on."
    assert clean_reply("  Fine  weather.  <|im_end|> junk", char="Orla", stops=("<|im_end|>",)) == "Fine weather."
    assert clean_reply("\n\n", char="Orla") == ""


def test_clean_reply_knows_the_speakers_by_name_only():
    """Names are compared as text (any characters, any case); a line like "Time: noon" is not a turn."""
    speakers = ("Mr. (Goldenfold)", "sailor*42")
    raw = "orla :  Time: noon, as ever.\n\n  mr. (goldenfold): a question\nmore"
    assert clean_reply(raw, char="Orla", user_names=speakers) == "Time: noon, as ever."
    assert clean_reply("Aye.\nSAILOR*42 : and?", char="Orla", user_names=speakers) == "Aye."
    assert clean_reply("Aye.\nsailor: not one of them", char="Orla", user_names=speakers) == "Aye.\nsailor: not one of them"


def test_usable_rejects_empty_and_echo():
    assert not is_usable("", "hi")
    assert not is_usable("  ...  ", "hi")
    assert not is_usable("Hello there!", "hello, there")
    assert is_usable("Ahoy.", "Hello there")


def test_no_repeat_ngram_bans_completing_a_seen_trigram():
    ng = NoRepeatNGram(3)
    for t in [5, 6, 7, 5]:
        ng.push(t)
    assert ng.banned() == set()  # (7, 5) not seen before
    ng.push(6)
    assert ng.banned() == {7}  # (5, 6) -> 7 would repeat 5 6 7
    assert NoRepeatNGram(0).banned() == set()


def test_trim_to_sentence():
    assert trim_to_sentence("Batten down, sprat. The gulls have gone qu") == "Batten down, sprat."
    assert trim_to_sentence("no sentence end here") == "no sentence end here"
    assert trim_to_sentence('She said "go!" and then') == 'She said "go!"'
