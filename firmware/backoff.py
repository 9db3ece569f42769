"""The one reconnect back-off of linetap: exponential, jittered, bounded.

Attempt ``n`` waits a random time in ``[ceiling * (1 - jitter), ceiling]``,
where ``ceiling = min(maximum, initial * factor**n)``, and never less than
``minimum``. ``jitter = 1`` is "full jitter" (anything from 0 to the ceiling),
which spreads a fleet that lost its broker at one moment the most; a smaller
jitter keeps waits near the ceiling (a modem on a power circuit, a worker that
must not hammer the broker).

A foundation module like :mod:`linetap.firmware.clock`: it imports nothing from
the project but the error tree, so drivers and sync use the same algorithm.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from linetap.firmware.errors import ConfigError


@dataclass(frozen=True)
class Backoff:
    """How long to wait before each reconnect attempt; see the module docstring."""

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0
    jitter: float = 1.0
    minimum: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ConfigError(f"back-off initial={self.initial} s, maximum={self.maximum} s: "
                              "need 0 < initial <= maximum, e.g. 0.5 and 30")
        if self.factor < 1:
            raise ConfigError(f"back-off factor={self.factor} would shrink the wait; use 1 or more, e.g. 2")
        if not 0 <= self.jitter <= 1:
            raise ConfigError(f"back-off jitter={self.jitter} must be a fraction in [0, 1], e.g. 0.2")
        if not 0 <= self.minimum <= self.maximum:
            raise ConfigError(f"back-off minimum={self.minimum} s must be in [0, maximum={self.maximum}]")

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """The waits before each attempt, without end; start a new iterator to reset."""
        rng = rng or random.Random()
        ceiling = self.initial
        while True:
            yield max(self.minimum, rng.uniform(ceiling * (1 - self.jitter), ceiling))
            ceiling = min(self.maximum, ceiling * self.factor)
