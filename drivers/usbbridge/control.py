"""The rate controller: a PI loop on the FIFO's fill level, filtered (sans-IO).

Plant: with the level ``L`` in seconds and the correction ``u`` the relative
change of the resampler's step, ``dL/dt = d - u``, where ``d`` is the clock
mismatch (the producer's clock over the consumer's, minus one). So ``u``
must settle at ``d`` with ``L`` at its target. A PI controller,
``u = Kp * e + Ki * integral(e)``, gives the closed loop
``s^2 + Kp s + Ki``: natural frequency ``w = sqrt(Ki)`` and damping
``Kp / (2 w)``. With ``w = 0.2 rad/s`` and damping 0.9 a 600 ppm step (two
clocks 300 ppm apart each way) moves the level by at most about 1.1 ms and
settles within about 30 s, while measurement noise (callback jitter) reaches
the step only through ``Kp`` after a one-pole filter of ``FILTER_S``: about
10 ppm of pitch wobble for 1 ms of jitter, far below hearing.

The integral is clamped to ``max_ppm`` (no wind-up while a device is away),
and so is ``u``: a clock further off than that is a fault the bridge reports,
not one it follows.
"""

from __future__ import annotations

from dataclasses import dataclass

NATURAL_RAD_S = 0.2
DAMPING = 0.9
FILTER_S = 0.5  # time constant of the level's one-pole low-pass
MAX_DT_S = 0.5  # a longer gap between updates (a stalled device) counts as this much


@dataclass
class RateController:
    """Steers one resampler so that its FIFO's level stays at ``target_s``."""

    target_s: float
    max_ppm: float = 1000.0
    natural_rad_s: float = NATURAL_RAD_S
    damping: float = DAMPING

    def __post_init__(self) -> None:
        self.kp = 2 * self.damping * self.natural_rad_s
        self.ki = self.natural_rad_s ** 2
        self.limit = self.max_ppm * 1e-6
        self.integral = 0.0
        self.filtered: float | None = None
        self.correction = 0.0
        self._last: float | None = None

    def update(self, level_s: float, now: float) -> float:
        """Take one level measurement (seconds of audio) at ``now``; returns the new correction."""
        if self._last is None or self.filtered is None:
            self._last, self.filtered = now, level_s
            return self.correction
        dt = min(max(now - self._last, 0.0), MAX_DT_S)
        self._last = now
        self.filtered += (level_s - self.filtered) * min(1.0, dt / FILTER_S)
        error = self.filtered - self.target_s
        self.integral = min(max(self.integral + self.ki * error * dt, -self.limit), self.limit)
        self.correction = min(max(self.kp * error + self.integral, -self.limit), self.limit)
        return self.correction

    def restart_filter(self) -> None:
        """Forget the level history (after a resync), keeping the learnt clock ratio."""
        self.filtered = None
        self._last = None

    @property
    def ppm(self) -> float:
        """The clock mismatch learnt so far (the integral), in ppm."""
        return self.integral * 1e6
