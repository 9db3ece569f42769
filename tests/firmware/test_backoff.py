"""The one back-off: bounded, growing, jittered, repeatable with a seeded generator."""

from __future__ import annotations

import itertools
import random

import pytest

from linetap.firmware.backoff import Backoff
from linetap.firmware.errors import ConfigError


def take(backoff: Backoff, n: int, seed: int = 7) -> list[float]:
    return list(itertools.islice(backoff.delays(random.Random(seed)), n))


def test_full_jitter_stays_under_a_ceiling_that_doubles_up_to_the_maximum() -> None:
    delays = take(Backoff(initial=1, maximum=30), 12)
    for n, delay in enumerate(delays):
        assert 0 <= delay <= min(30, 2 ** n)
    assert max(delays[6:]) > 8  # it does grow
    assert take(Backoff(initial=1, maximum=30), 12) == delays  # seeded: repeatable


def test_small_jitter_keeps_waits_near_the_ceiling_and_minimum_is_a_floor() -> None:
    for n, delay in enumerate(take(Backoff(initial=0.5, maximum=30, jitter=0.2), 10)):
        ceiling = min(30, 0.5 * 2 ** n)
        assert 0.8 * ceiling <= delay <= ceiling
    assert min(take(Backoff(initial=2, maximum=60, jitter=1, minimum=2), 50)) >= 2


def test_a_constant_back_off() -> None:
    assert take(Backoff(initial=3, maximum=3, jitter=0), 4) == [3, 3, 3, 3]


@pytest.mark.parametrize("kwargs, words", [
    ({"initial": 5, "maximum": 1}, "initial <= maximum"),
    ({"initial": 0}, "initial <= maximum"),
    ({"factor": 0.5}, "shrink"),
    ({"jitter": 1.5}, "fraction"),
    ({"minimum": 99}, "minimum"),
])
def test_nonsense_is_refused_by_name(kwargs: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        Backoff(**kwargs)
