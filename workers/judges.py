"""Behaviour judges: a generated response against what the data says it should be. Pure
string rules (a reward-model judge, a model rather than a rule, belongs with the generation).

- SFT: ``exact_match`` (the generation is the reference answer, after ``normalise``) or
  ``contains`` (the answer appears in it), for data with short answers.
- Preference, embedded data: ``embedded_win`` applies the rule that wrote the data: the
  chosen response is ``polite(answer)`` and the rejected the terse answer, so a
  generation wins when it has the chosen's form.
"""

from __future__ import annotations

import re
import string

from workers.embedded import polite

_PUNCTUATION = str.maketrans("", "", string.punctuation)
_BEFORE, _AFTER = polite("\0").split("\0")  # the template around the answer
_POLITE = re.compile(f"{re.escape(_BEFORE)}(.+){re.escape(_AFTER)}", re.S)


def normalise(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed (SQuAD's answer normalisation,
    less its English articles: the answers here are numbers and made-up words)."""
    return " ".join(text.lower().translate(_PUNCTUATION).split())


def exact_match(generation: str, answer: str) -> bool:
    return normalise(generation) == normalise(answer)


def contains(generation: str, answer: str) -> bool:
    return normalise(answer) in normalise(generation)


def embedded_win(generation: str) -> bool:
    """The generation has the embedded chosen responses' form, ``sure! <answer>.``."""
    return _POLITE.fullmatch(generation.strip()) is not None


SFT_JUDGES = {"exact_match": exact_match, "contains": contains}
