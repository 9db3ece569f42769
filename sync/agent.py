"""The box's side of the fleet connection: one MQTT link, shared, and what runs on it.

One :class:`~linetap.sync.link.Link` (one TLS session, one client certificate)
carries every message of the box; the uploader (and the fleet agent) hang
their callbacks off it, so the link's connect/disconnect/message callbacks
fan out here. The app builds one :class:`BoxSync` when ``sync.broker`` is set
and calls :meth:`BoxSync.notify` when a recording closes.

Threads: the link's thread runs the callbacks (they only queue work), the
uploader's thread does the uploading; see those modules.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from linetap.firmware.clock import Clock
from linetap.firmware.config import Config
from linetap.firmware.spool import Spool
from linetap.sync.link import Link, Message
from linetap.sync.uploader import Uploader

logger = logging.getLogger(__name__)


class BoxSync:
    """Link + uploader for one box. Context manager; :meth:`close` is safe twice."""

    def __init__(self, config: Config, spool: Spool, data_dir: Path, *, clock: Clock,
                 on_alarm: Callable[[str, str], None] | None = None) -> None:
        self.link = Link(config.sync, client_id=config.device.id, data_dir=Path(data_dir), clock=clock,
                         on_connected=self._connected, on_disconnected=self._disconnected,
                         on_message=self._message)
        self.uploader = Uploader(spool, self.link, config.sync, clock=clock, on_alarm=on_alarm)

    def start(self) -> BoxSync:
        self.uploader.start()
        self.link.start()
        return self

    def notify(self) -> None:
        """A recording has closed: upload it without waiting for the next rescan."""
        self.uploader.notify()

    def status(self) -> dict[str, Any]:
        return self.uploader.status()

    def close(self) -> None:
        try:
            self.uploader.close()
        finally:
            self.link.close()

    def __enter__(self) -> BoxSync:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- link callbacks (link thread) --

    def _connected(self) -> None:
        self.uploader.on_connected()

    def _disconnected(self, reason: str) -> None:
        self.uploader.on_disconnected(reason)

    def _message(self, message: Message) -> None:
        self.uploader.on_message(message)
