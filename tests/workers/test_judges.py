import pytest

from workers.embedded import polite, terse
from workers.judges import contains, embedded_win, exact_match, normalise


@pytest.mark.parametrize("text,expected", [
    ("  42 ", "42"), ("Sure! 42.", "sure 42"), ("TAM\n tam", "tam tam"), ("", ""), ("...", ""),
])
def test_normalise_lowers_drops_punctuation_and_collapses_whitespace(text, expected):
    assert normalise(text) == expected


def test_exact_match_and_contains():
    assert exact_match(" 42", "42") and exact_match("GEM.", "gem")
    assert not exact_match("sure! 42.", "42") and not exact_match("420", "42")
    assert contains("sure! 42.", "42") and contains("bak bak", "bak bak")
    assert not contains("4 2", "42")


@pytest.mark.parametrize("answer", ["42", "tam", "GEM", "bak bak"])
def test_embedded_win_is_the_rule_that_wrote_the_chosen_responses(answer):
    assert embedded_win(polite(answer)) and embedded_win(f" {polite(answer)}\n")
    assert not embedded_win(terse(answer))


@pytest.mark.parametrize("generation,wins", [
    ("sure! 45.", True),  # the style is judged, not the answer (the SFT judge checks that)
    ("sure! tam.", True),
    ("GGG", False),
    ("sure! 42", False),  # the chosen form ends with its full stop
    ("sure! .", False),  # and has an answer
    ("ok sure! 42.", False),
])
def test_embedded_win_on_what_models_answer(generation, wins):
    assert embedded_win(generation) is wins
