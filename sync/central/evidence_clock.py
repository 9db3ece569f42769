"""Clock honesty: the box's time for a recording against the store's receipt time.

Every manifest says whether the box's clock was synchronised when the call
started (``started.clock_synced``) and when the call ended by the box's clock
(``ended.wall_ms``; ``estimated`` when the box closed it after a power loss).
The delivery receipt says when the store stored it (``stored_ms``, the store's
clock). :func:`clock_report` sets them side by side and names what a reader
should doubt; these are warnings about the box's time, never integrity
failures (the signatures and hashes are checked elsewhere):

- ``clock-unsynchronised``: the box's clock was not synchronised, so its
  times may be far off (a Pi without network time starts at a stale time);
- ``clock-skew``: the box's end time is more than ``max_skew_ms`` after the
  store's receipt time, so the box's clock ran ahead (a late receipt is
  normal, an offline box uploads days later; see
  :class:`~linetap.sync.central.config.EvidenceSection`);
- ``clock-unknown``: the manifest gives no end time;
- ``clock-estimated``: the end time was estimated after a power loss.

Pure: values in, a report out; ``verify`` and the evidence bundle use it.
"""

from __future__ import annotations

from typing import Any

WARNINGS = ("clock-unsynchronised", "clock-skew", "clock-unknown", "clock-estimated")


def _int(value: Any) -> int | None:
    return value if type(value) is int else None


def clock_report(manifest: dict[str, Any], stored_ms: int | None, max_skew_ms: int) -> dict[str, Any]:
    """The clock section of a recording: times, their difference and the warnings, each with why."""
    started = manifest.get("started") if isinstance(manifest.get("started"), dict) else {}
    ended = manifest.get("ended") if isinstance(manifest.get("ended"), dict) else {}
    synced = started.get("clock_synced")
    box_ms = _int(ended.get("wall_ms"))
    report: dict[str, Any] = {
        "clock_synced": synced if isinstance(synced, bool) else None, "box_started_ms": _int(started.get("wall_ms")),
        "box_ended_ms": box_ms, "stored_ms": stored_ms, "box_ahead_ms": None, "max_skew_ms": max_skew_ms,
        "warnings": []}
    warnings: list[dict[str, str]] = report["warnings"]
    if synced is not True:
        warnings.append({"kind": "clock-unsynchronised", "detail": "the box's clock was not synchronised when "
                         "the call started: its times may be far off; trust the store's receipt time"})
    if ended.get("estimated") is True:
        warnings.append({"kind": "clock-estimated", "detail": "the end time was estimated when the box "
                         "recovered the recording after a power loss"})
    if box_ms is None or stored_ms is None:
        warnings.append({"kind": "clock-unknown", "detail": "no end time by the box's clock"
                         if box_ms is None else "no receipt time to compare with"})
        return report
    ahead = box_ms - stored_ms
    report["box_ahead_ms"] = ahead
    if ahead > max_skew_ms:
        warnings.append({"kind": "clock-skew", "detail": f"the box says the call ended {ahead / 1000:.1f} s after "
                         f"the store stored it (more than {max_skew_ms / 1000:.0f} s): the box's clock ran ahead"})
    return report


def describe(report: dict[str, Any]) -> str:
    """One line: the two times and how they differ."""
    ahead = report["box_ahead_ms"]
    if ahead is None:
        return "box time and store time cannot be compared"
    when = f"{-ahead / 1000:.1f} s after the call ended by the box's clock" if ahead <= 0 \
        else f"{ahead / 1000:.1f} s before the call ended by the box's clock"
    synced = {True: "synchronised", False: "not synchronised", None: "of unknown state"}[report["clock_synced"]]
    return f"stored {when}; box clock {synced}"
