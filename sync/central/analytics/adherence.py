"""Script adherence: scripts in TOML, fuzzy phrase matching, one result per item per call.

A script (one TOML file; ``[analytics] scripts`` lists them)::

    name = "inbound"

    [[required]]
    id = "greeting"
    phrases = ["thank you for calling acme", "thanks for calling acme"]   # acceptable variants
    channel = "agent"           # agent (near), caller (far) or any
    within_s = 15               # said within the first 15 s of the call (optional)

    [[forbidden]]
    id = "no-guarantees"
    phrases = ["i guarantee", "we guarantee"]
    channel = "agent"
    threshold = 0.8             # fuzzy score needed to count as said (default 0.75)

Matching is token-level edit distance between a phrase and every window of
the channel's words (a window one word shorter or longer too, for a dropped
or split word); two tokens count as the same when their letters differ by at
most a fifth (Whisper's "Acne" for "Acme"). The score is 1 minus the edits
over the longer of the two; the best window's score decides. A required item
passes when a variant scores at least ``threshold`` (inside ``within_s`` when
given); a forbidden item passes when none does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from linetap.firmware.errors import ConfigError
from linetap.firmware.schema import Schema, load_model, read_toml
from linetap.sync.central.analytics.engine import Word
from linetap.sync.central.analytics.text import tokens

CHANNELS = {"agent": "near", "caller": "far"}
MAX_PHRASE_WORDS = 30


class Item(Schema):
    id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9._-]*$")]
    phrases: Annotated[list[Annotated[str, Field(min_length=1, max_length=300)]], Field(min_length=1, max_length=50)]
    channel: Literal["agent", "caller", "any"] = "agent"
    within_s: Annotated[float, Field(gt=0)] | None = None
    threshold: Annotated[float, Field(gt=0, le=1)] = 0.75


class Script(Schema):
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9._-]*$")]
    required: list[Item] = []
    forbidden: list[Item] = []


@dataclass(frozen=True)
class ItemResult:
    script: str
    item: str
    kind: str  # "required" or "forbidden"
    passed: bool
    score: int  # best match, percent
    at_ms: int | None  # where the best match starts (ms from the call's audio start)
    heard: str | None  # the words of the best match

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def load_script(path: Path) -> Script:
    """A script file, checked (every problem named with its key); ConfigError otherwise."""
    data = read_toml(Path(path), missing_hint="fix [analytics] scripts")
    script = load_model(Script, data, source=str(path), guide="sync/central/analytics/adherence.py")
    for item in (*script.required, *script.forbidden):
        if any(len(tokens(p)) == 0 or len(tokens(p)) > MAX_PHRASE_WORDS for p in item.phrases):
            raise ConfigError(f"{path}: item {item.id} has a phrase with no words or more than "
                              f"{MAX_PHRASE_WORDS}; write each variant as the words an agent says")
    return script


def evaluate(script: Script, channels: dict[str, Sequence[Word]]) -> list[ItemResult]:
    """The script's items against the call's words per channel (``near``, ``far``)."""
    out = []
    for kind, items in (("required", script.required), ("forbidden", script.forbidden)):
        for item in items:
            words = _words_of(item.channel, channels)
            score, at, heard = best_match(item.phrases, words, item.within_s)
            said = score >= item.threshold
            out.append(ItemResult(script.name, item.id, kind, said if kind == "required" else not said,
                                  round(score * 100), None if at is None else round(at * 1000), heard))
    return out


def _words_of(channel: str, channels: dict[str, Sequence[Word]]) -> list[tuple[str, Word]]:
    names = ("near", "far") if channel == "any" else (CHANNELS[channel],)
    flat = [(t, w) for name in names for w in channels.get(name, ()) for t in tokens(w.text)]
    return sorted(flat, key=lambda tw: tw[1].start) if channel == "any" else flat


def best_match(phrases: Sequence[str], words: Sequence[tuple[str, Word]],
               within_s: float | None) -> tuple[float, float | None, str | None]:
    """(score, start seconds, words heard) of the best window for any variant."""
    best: tuple[float, float | None, str | None] = (0.0, None, None)
    for phrase in phrases:
        want = tokens(phrase)
        for size in (len(want) - 1, len(want), len(want) + 1):
            if size < 1:
                continue
            for i in range(len(words) - size + 1):
                if within_s is not None and words[i][1].start > within_s:
                    break
                window = [t for t, _ in words[i:i + size]]
                score = 1 - token_distance(want, window) / max(len(want), size)
                if score > best[0]:
                    best = (score, words[i][1].start, " ".join(window))
    return best


def token_distance(a: Sequence[str], b: Sequence[str]) -> int:
    """Edit distance between token lists, a near-identical pair of tokens costing nothing."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            cost = 0 if _same(x, y) else 1
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + cost)
    return row[-1]


def _same(x: str, y: str) -> bool:
    if x == y:
        return True
    longest = max(len(x), len(y))
    return longest >= 4 and _char_distance(x, y) <= longest // 5


def _char_distance(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]
