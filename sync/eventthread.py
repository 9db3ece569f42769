"""A link's worker thread: events in through a queue, one thread acting on them, a bounded stop.

The uploader and the updater are both built this way: the link's callbacks
(on paho's thread) only queue a ``(kind, value)`` event and return, and the
worker's own thread does the work, so nothing slow ever runs on paho's thread.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Self

from linetap.firmware.errors import SyncError

JOIN_S = 10.0


class EventThread:
    """``start``/``close``/``with`` for a worker whose ``_run`` reads ``self._events`` until ``("stop", None)``."""

    thread_name = "worker"

    def __init__(self) -> None:
        self._events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop the thread (the link is the caller's to close). Safe to call twice."""
        thread, self._thread = self._thread, None
        self._stop.set()
        self._events.put(("stop", None))
        if thread is not None:
            thread.join(JOIN_S)
            if thread.is_alive():
                raise SyncError(f"{self.thread_name} thread did not stop within {JOIN_S:.0f} s")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def on_connected(self) -> None:
        self._events.put(("connected", None))
