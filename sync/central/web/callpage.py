"""One call: metadata, consent events and markers, the evidence panel, and the blocks other modules fill.

The template (``call.html``) has named blocks ``player``, ``waveform``,
``evaluations`` and ``comments``, each including an optional template
(``media_player.html``, shown when the user may hear the call and it passed
its checks; ``call_waveform.html``, ``call_evaluations.html``,
``call_comments.html``) that the media and QA modules ship. A feature module
with ``call_context(request, row, scope) -> dict`` adds to the page's context
(it runs in a worker thread, after the recording passed the scope check).
An erased or damaged recording still opens: the panel says what happened.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from linetap.sync.central.web.access import agent_at, scope_of, visible_recording
from linetap.sync.central.web.audit import audit
from linetap.sync.central.web.evidencepanel import evidence
from linetap.sync.central.web.pages import page

MARKER_LABELS = {"announcement-start": "announcement starts", "announcement-end": "announcement ends",
                 "opt-out": "caller opted out", "private": "made private", "fault": "fault", "flag": "flagged",
                 "pause-start": "recording paused", "pause-end": "recording resumed", "policy": "policy"}


def routes() -> list[Route]:
    return [Route("/calls/{device_id}/{recording_id}", call, name="call")]


def call(request: Request) -> Response:
    stored = request.app.state.settings.stored
    user = request.state.user
    scope = scope_of(stored.index, user)
    row = visible_recording(stored.index, scope, request.path_params["device_id"],
                            request.path_params["recording_id"])
    audit(request, "view", device_id=row["device_id"], recording_id=row["recording_id"])
    lines, manifest = evidence(stored, row)
    context: dict[str, Any] = {
        "row": row, "device_id": row["device_id"], "recording_id": row["recording_id"], "scope": scope, "evidence": lines, "manifest": manifest,
        "agent": agent_at(stored.index.desk_assignments(), row["device_id"], row["started_ms"]),
        "markers": markers(row, manifest), "playable": scope.audio and manifest is not None}
    from linetap.sync.central.web.app import feature_modules

    for module in feature_modules():
        hook = getattr(module, "call_context", None)
        if hook is not None:
            context.update(hook(request, row, scope))
    return page(request, "call.html", context)


def markers(row: dict[str, Any], manifest: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The call's events and its pause, mute and mask spans, in time order: {t (s or None), label, details}."""
    events = manifest.get("events") if manifest else row["consent"]
    out = []
    for event in events if isinstance(events, list) else []:
        if not isinstance(event, dict) or not isinstance(event.get("kind"), str):
            continue
        detail = event.get("detail") if isinstance(event.get("detail"), dict) else {}
        out.append({"t": _seconds(event.get("t_ms")), "kind": event["kind"],
                    "label": MARKER_LABELS.get(event["kind"], event["kind"]),
                    "details": ", ".join(f"{k}: {v}" for k, v in detail.items() if isinstance(v, (str, int, float)))})
    for name, label in (("pauses", "paused (not recorded)"), ("mutes", "agent muted"),
                        ("masks", "masked (DTMF)")):
        spans = (manifest or {}).get(name)
        for span in spans if isinstance(spans, list) else []:
            if isinstance(span, list) and len(span) == 2:
                start, end = _seconds(span[0]), _seconds(span[1])
                if start is not None:
                    out.append({"t": start, "kind": name, "label": label,
                                "details": f"until {end:.1f} s" if end is not None else "to the end"})
    return sorted(out, key=lambda m: (m["t"] is None, m["t"] or 0))


def _seconds(ms: Any) -> float | None:
    return ms / 1000 if isinstance(ms, int) and not isinstance(ms, bool) else None
