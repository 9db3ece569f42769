"""The console's one way to the access log: every login, search, play, download, evaluation, hold, erase.

:func:`audit` appends to the index's hash-chained log
(:mod:`~linetap.sync.central.accesslog`) with the session's user as the actor
and ``web <client address>`` as the origin (behind a trusted proxy, the
address it forwarded).
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import Request

from linetap.sync.central.accesslog import Access

logger = logging.getLogger(__name__)


def origin(request: Request) -> str:
    """Where a request came from: ``web`` and the client's address."""
    client = request.client
    return f"web {client.host if client else 'unknown'}"


def actor(request: Request) -> str:
    user = getattr(request.state, "user", None)
    return user["name"] if user else "anonymous"


def audit(request: Request, action: str, *, device_id: str | None = None, recording_id: str | None = None,
          detail: str | None = None, who: str | None = None) -> dict[str, Any]:
    """Append one entry (call from a worker thread: it writes the index). ``who`` overrides the actor
    (a login before there is a session)."""
    settings = request.app.state.settings
    entry = settings.stored.index.log_access(
        Access(actor=who or actor(request), action=action, origin=origin(request), device_id=device_id,
               recording_id=recording_id, detail=detail),
        round(settings.clock.wall() * 1000))
    logger.info("console access action=%s actor=%s device=%s recording=%s", action, entry["actor"],
                device_id, recording_id)
    return entry
