"""Talking to the service manager: readiness, status and the watchdog (the sd_notify protocol).

systemd starts the recorder as ``Type=notify`` with ``WatchdogSec=``: it
waits for ``READY=1`` and restarts the service when ``WATCHDOG=1`` stops
coming. The recorder pets the watchdog only from the call loop, after a block
of audio was processed while the loop kept up (little backlog), so a stalled
codec, a hung sink or a loop that falls behind all end in a restart, not in
a box that looks alive and records nothing.

The protocol is one datagram per message to the AF_UNIX socket named by
``$NOTIFY_SOCKET`` (an ``@`` prefix means the abstract namespace); without
that variable (not run by systemd) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket

from linetap.firmware.clock import Clock

logger = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify messages; a no-op outside systemd."""

    def __init__(self, clock: Clock, *, address: str | None = None,
                 watchdog_usec: str | None = None) -> None:
        self._clock = clock
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        usec = watchdog_usec if watchdog_usec is not None else os.environ.get("WATCHDOG_USEC")
        self._address = "\0" + address[1:] if address and address.startswith("@") else address
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) if address else None
        # systemd's advice: pet at half the timeout.
        self.pet_interval = int(usec) / 2e6 if usec and usec.isdigit() and int(usec) > 0 else None
        self._last_pet: float | None = None
        self.pets = 0

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def _send(self, message: str) -> None:
        if self._socket is None:
            return
        try:
            self._socket.sendto(message.encode(), self._address)
        except OSError as exc:
            # The manager being unreachable must not stop recording; it will restart us if it cares.
            logger.warning("sd_notify failed message=%s error=%s", message.split("=")[0], exc.strerror)

    def ready(self, status: str = "recording") -> None:
        self._send(f"READY=1\nSTATUS={status}")

    def status(self, text: str) -> None:
        self._send(f"STATUS={text}")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def pipeline_alive(self) -> None:
        """Called by the call loop after a block processed in time; pets at most every pet_interval."""
        if self.pet_interval is None:
            return
        now = self._clock.monotonic()
        if self._last_pet is None or now - self._last_pet >= self.pet_interval:
            self._last_pet = now
            self.pets += 1
            self._send("WATCHDOG=1")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
