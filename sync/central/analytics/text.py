"""Words as the index keeps them: normalised tokens, searchable lines, spoken card data found and redacted.

Pure functions over :class:`~.engine.Word` lists; no I/O.

Spoken card data. Whisper writes spoken digits in several ways ("4111 1111",
"4-1-1-1", "four one one one", "4, 1, 1"): every word is reduced to its
digits (a digit word such as "four" or "oh" to one digit), and a run of
consecutive digit words is a number. A run holding 13 to 19 digits that pass
the Luhn check is a card number; 3 or 4 digits within a few words after
"security code", "CVV", "CVC" or "card verification" are a security code. A run of 13 to 19
digits that fails the check is redacted and reported too (``digit-run``):
the engine mishears a digit now and then, and a misheard card number is
still card data.
The words of both are replaced by :data:`REDACTED` before any transcript is
stored, so the digits never reach the index, and their spans are reported
for the ``spoken-card-data`` event and the redacted audio copy.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from linetap.sync.central.analytics.engine import Word

REDACTED = "[redacted]"
DIGIT_WORDS = {"zero": "0", "oh": "0", "o": "0", "one": "1", "two": "2", "three": "3", "four": "4",
               "for": "4", "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9"}
# "for" is a digit only inside a run of digits (see _digits); alone it is a word.
CODE_CUES = (("security", "code"), ("cvv",), ("cvc",), ("cv2",), ("card", "verification"),
             ("verification", "code"), ("three", "digit"), ("3", "digit"))
CODE_REACH = 6  # words after a cue in which a security code is looked for
CARD_DIGITS = (13, 19)
LINE_WORDS = 24  # most words in one searchable line
LINE_GAP_S = 1.5  # a pause this long starts a new line
_TOKEN = re.compile(r"[a-z0-9']+")


@dataclass(frozen=True)
class Span:
    """Spoken card data: which kind, where (seconds from the channel's start), which words (indexes)."""

    kind: str  # "card-number", "digit-run" (13-19 digits, not Luhn-valid) or "security-code"
    start: float
    end: float
    first: int
    last: int


def tokens(text: str) -> list[str]:
    """Lower-case word tokens of ``text`` (punctuation dropped; "4,111" -> "4", "111")."""
    return _TOKEN.findall(text.lower())


def luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _digits(word: Word, in_run: bool) -> str | None:
    """The digits a word speaks ("4111" -> "4111", "four" -> "4"), None when it is no number."""
    parts = tokens(word.text)
    if not parts:
        return None
    out = []
    for part in parts:
        if part.isdigit():
            out.append(part)
        elif part in DIGIT_WORDS and (in_run or part not in ("for", "o", "oh")):
            out.append(DIGIT_WORDS[part])
        else:
            return None
    return "".join(out)


def _runs(words: Sequence[Word]) -> list[tuple[int, int, str]]:
    """(first, last, digits) of every run of consecutive digit words."""
    runs: list[tuple[int, int, str]] = []
    first, digits = -1, ""
    for i, word in enumerate(words):
        d = _digits(word, in_run=bool(digits))
        if d is not None:
            first, digits = (i if not digits else first), digits + d
            continue
        if digits:
            runs.append((first, i - 1, digits))
        first, digits = -1, ""
    if digits:
        runs.append((first, len(words) - 1, digits))
    return runs


def card_spans(words: Sequence[Word]) -> list[Span]:
    """Luhn-valid card numbers and security codes after a cue, in ``words``."""
    spans: list[Span] = []
    cue_ends = _cue_ends(words)
    for first, last, digits in _runs(words):
        if CARD_DIGITS[0] <= len(digits) <= CARD_DIGITS[1] and luhn(digits):
            spans.append(Span("card-number", words[first].start, words[last].end, first, last))
        elif CARD_DIGITS[0] <= len(digits) <= CARD_DIGITS[1]:
            spans.append(Span("digit-run", words[first].start, words[last].end, first, last))
        elif len(digits) in (3, 4) and any(0 <= first - end <= CODE_REACH for end in cue_ends):
            spans.append(Span("security-code", words[first].start, words[last].end, first, last))
    return spans


def _cue_ends(words: Sequence[Word]) -> list[int]:
    flat = [(i, t) for i, w in enumerate(words) for t in tokens(w.text)]
    names = [t for _, t in flat]
    ends = []
    for cue in CODE_CUES:
        for k in range(len(names) - len(cue) + 1):
            if tuple(names[k:k + len(cue)]) == cue:
                ends.append(flat[k + len(cue) - 1][0] + 1)
    return ends


def redacted(words: Sequence[Word], spans: Sequence[Span]) -> list[Word]:
    """``words`` with each word of a span replaced by :data:`REDACTED` (times kept)."""
    hidden = {i for span in spans for i in range(span.first, span.last + 1)}
    return [replace(w, text=REDACTED) if i in hidden else w for i, w in enumerate(words)]


def outside(words: Sequence[Word], silenced: Sequence[tuple[float, float]]) -> list[Word]:
    """The words whose middle lies in no silenced span (what the engine heard in silence is not kept)."""
    return [w for w in words if not any(a <= (w.start + w.end) / 2 < b for a, b in silenced)]


def lines(words: Sequence[Word]) -> list[list[Word]]:
    """Words cut into searchable lines: at most :data:`LINE_WORDS`, a new line after a long pause."""
    out: list[list[Word]] = []
    for word in words:
        if not out or len(out[-1]) >= LINE_WORDS or word.start - out[-1][-1].end >= LINE_GAP_S:
            out.append([])
        out[-1].append(word)
    return out
