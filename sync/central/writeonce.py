"""Write-once storage of whole recordings: the object lock at ingest, legal holds, and the check before erasure.

The store (:mod:`~linetap.sync.central.store`) locks, holds and refuses one
object at a time; a recording is several (its segments and its manifest).
These functions apply ``[store] object_lock`` and ``[retention]`` to all of
them, so ingest, ``hold`` and ``erase`` treat a recording as one thing:

- :func:`lock_recording` (ingest, once the manifest completes the recording):
  every object retained until the recording's start plus its category's days;
- :func:`hold_recording` (``hold set`` / ``hold clear``): the legal hold on every object;
- :func:`refuse_retained` (``erase``, before any tombstone): the first object a
  lock or hold keeps, named with until when, so nothing is written or marked
  erased that the store would then refuse to erase.

With ``object_lock = "off"`` the first two do nothing (the index alone keeps
holds and retention); the third always asks, since a bucket may lock by its
own default retention.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from linetap.sync.central.config import RetentionSection, StoreSection
from linetap.sync.central.store import LockUnsupported, ObjectLocked, ObjectStore, StoreUnavailable, retention_lock

logger = logging.getLogger(__name__)


def lock_recording(store: ObjectStore, section: StoreSection, retention: RetentionSection, keys: Iterable[str], *,
                   started_ms: int, flagged: bool, now_ms: int) -> None:
    """Lock every object in ``keys`` as ``[store] object_lock`` and the recording's category say (nothing
    when its retention already ended at ``now_ms``: it is due for erasure, and S3 takes no past date).

    A bucket that cannot lock is :class:`StoreUnavailable` (the box is answered
    ``retry``, nothing is acknowledged) naming the fix, not an object stored
    unlocked behind the operator's back.
    """
    lock = retention_lock(section.object_lock, started_ms, retention.days_for(flagged), now_ms=now_ms)
    if lock is None:
        return
    for key in keys:
        try:
            store.lock(key, lock)
        except LockUnsupported as e:
            raise StoreUnavailable(f"{e}; nothing was acknowledged, the box will send it again") from e


def hold_recording(store: ObjectStore, section: StoreSection, keys: Iterable[str], on: bool) -> None:
    """Set (``on``) or clear the store's legal hold on every object in ``keys`` when object lock is on."""
    if section.object_lock == "off":
        return
    for key in keys:
        store.hold(key, on)


def refuse_retained(store: ObjectStore, keys: Iterable[str], what: str) -> None:
    """Raise :class:`ObjectLocked` for the first object of ``keys`` the store would refuse to erase now.

    ``what`` names the recording in the message, which also says until when
    and what to do (wait, or clear the legal hold).
    """
    for key in keys:
        refusal = store.retained(key)
        if refusal is not None:
            raise ObjectLocked(f"{what} cannot be erased: {refusal}; nothing was erased or marked",
                               until=refusal.until, mode=refusal.mode, legal_hold=refusal.legal_hold)


def check_lock_config(section: StoreSection, retention: RetentionSection) -> list[str]:
    """What is wrong in ``[store] object_lock`` against ``[retention]`` (each with its fix); empty when fine."""
    if section.object_lock == "off":
        return []
    problems = []
    for name, days in (("default_days", retention.default_days), ("flagged_days", retention.flagged_days)):
        if days == 0:
            problems.append(f"[retention] {name} = 0 keeps those recordings for ever, so with [store] object_lock "
                            f"= \"{section.object_lock}\" they are not locked at all (a lock needs a date); give "
                            f"{name} a number of days to lock them")
    return problems

