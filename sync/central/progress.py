"""Progress of a long job (objects, bytes, rate, time left), shown at most once per interval.

:class:`Progress` is shared by ``migrate-store`` and ``import``: the job says
what it did (:meth:`Progress.advance`, from any thread) and the display
decides when to show it, on the injected clock, so a job of a million
objects writes a line a second, not a million. Text lines for a person, or
one JSON object per line (``--json``) for a program; both go to the stream
given (the commands pass stderr, so stdout keeps the job's result alone).

Work found already done (a resumed run skipping what it copied before)
counts toward the total done but not toward the rate, so time left is
estimated from what this run actually moves.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from typing import Any

from linetap.firmware.clock import Clock, SystemClock

DEFAULT_INTERVAL_S = 1.0


class Progress:
    """Counts of a job with ``objects`` and ``nbytes`` to do (0: not known), shown through ``write``.

    ``write`` takes one line without its newline. ``what`` names the job in every line.
    """

    def __init__(self, what: str, write: Callable[[str], None], *, objects: int = 0, nbytes: int = 0,
                 as_json: bool = False, clock: Clock | None = None, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        self.what = what
        self._write = write
        self._json = as_json
        self._clock = clock or SystemClock()
        self._interval = interval_s
        self._lock = threading.Lock()
        self.total_objects, self.total_bytes = objects, nbytes
        self.objects = self.bytes = 0  # done, skipped included
        self._moved_objects = self._moved_bytes = 0  # done by this run
        self._started = self._clock.monotonic()
        self._shown: float | None = None

    def total(self, objects: int, nbytes: int = 0) -> None:
        """Set what the job has to do, once it knows."""
        with self._lock:
            self.total_objects, self.total_bytes = objects, nbytes

    def advance(self, objects: int = 1, nbytes: int = 0, *, skipped: bool = False) -> None:
        """Count work done (``skipped``: found done already); shows a line when the interval has passed."""
        with self._lock:
            self.objects += objects
            self.bytes += nbytes
            if not skipped:
                self._moved_objects += objects
                self._moved_bytes += nbytes
            now = self._clock.monotonic()
            if self._shown is not None and now - self._shown < self._interval:
                return
            self._shown = now
            line = self._line(self._figures(now))
        self._write(line)

    def finish(self) -> dict[str, Any]:
        """Show the final figures whatever the interval; returns them."""
        with self._lock:
            figures = self._figures(self._clock.monotonic())
            figures["done"] = True
            line = self._line(figures)
        self._write(line)
        return figures

    def _figures(self, now: float) -> dict[str, Any]:
        elapsed = max(now - self._started, 1e-9)
        objects_s = self._moved_objects / elapsed
        bytes_s = self._moved_bytes / elapsed
        left = None
        if self.total_bytes and bytes_s > 0:
            left = max(self.total_bytes - self.bytes, 0) / bytes_s
        elif self.total_objects and objects_s > 0:
            left = max(self.total_objects - self.objects, 0) / objects_s
        return {"progress": self.what, "objects": self.objects, "total_objects": self.total_objects or None,
                "bytes": self.bytes, "total_bytes": self.total_bytes or None,
                "objects_per_s": round(objects_s, 1), "bytes_per_s": round(bytes_s),
                "elapsed_s": round(elapsed, 1), "left_s": None if left is None else round(left, 1)}

    def _line(self, f: dict[str, Any]) -> str:
        if self._json:
            return json.dumps(f)
        objects = f"{f['objects']}" + (f"/{f['total_objects']}" if f["total_objects"] else "")
        size = _mb(f["bytes"]) + (f"/{_mb(f['total_bytes'])}" if f["total_bytes"] else "")
        left = "" if f["left_s"] is None or f.get("done") else f", {_duration(f['left_s'])} left"
        state = " done in " + _duration(f["elapsed_s"]) if f.get("done") else ""
        return (f"{self.what}: {objects} objects, {size} MB, {f['bytes_per_s'] / 1e6:.1f} MB/s "
                f"({f['objects_per_s']:g} objects/s){left}{state}")


def on_stderr(what: str, *, as_json: bool = False, interval_s: float = DEFAULT_INTERVAL_S) -> Progress:
    """A command's progress: lines on stderr, flushed, so stdout holds only the command's result."""
    return Progress(what, lambda line: print(line, file=sys.stderr, flush=True), as_json=as_json,
                    interval_s=interval_s)


def _mb(nbytes: int) -> str:
    return f"{nbytes / 1e6:.1f}"


def _duration(seconds: float) -> str:
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
