"""What is known about one call: its record and its event log, and the ids that name calls.

The call flow (:mod:`linetap.firmware.callflow`) builds a :class:`CallRecord`;
the recorder, the spool, the manifest and the central store read it.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from linetap.drivers.events import CallerId


@dataclass(frozen=True)
class CallEvent:
    """One line of a call's event log; ``t`` is seconds since the call started."""

    t: float
    kind: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CallRecord:
    """What is known about a call. ``caller`` is personal data: never logged in clear."""

    call_id: str
    started_mono: float
    started_wall: float
    clock_synced: bool
    caller: CallerId | None = None
    flagged: bool = False
    recorded: bool = False  # some audio was kept and not discarded
    ended_by: str | None = None
    ended_mono: float | None = None
    events: tuple[CallEvent, ...] = ()

    @property
    def caller_withheld(self) -> str | None:
        """Why the caller's number (or name) was not delivered: ``private``, ``out-of-area``...

        Plain, not personal data: the manifest and the central index carry it unsealed.
        """
        return None if self.caller is None else self.caller.reason_withheld


def uuid7() -> str:
    """A time-ordered UUID (RFC 9562 version 7): recordings sort by id as they sort by time."""
    ms = time.time_ns() // 1_000_000
    value = (ms & ((1 << 48) - 1)) << 80 | int.from_bytes(secrets.token_bytes(10), "big") & ((1 << 80) - 1)
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # variant
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
