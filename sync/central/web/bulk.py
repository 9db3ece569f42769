"""Bulk download: the selected calls as one zip, each call's audio (WAV or Ogg) beside its signed manifest.

Every selected id passes :func:`~linetap.sync.central.web.access.visible_recording`
(an id the user may not see is refused as if it did not exist) and the user
must be allowed to hear audio. Each call is checked and decrypted in memory by
:func:`~linetap.sync.central.export.audio_of`, as ``linetap-central export``
does; a call that is erased or fails its checks is left out and named, with
why, in the zip's ``PROBLEMS.txt``. Each call put in the zip is audited
(``download``). The zip is streamed as it is made, one call in memory at a
time: decrypted audio never touches the disk.
"""

from __future__ import annotations

import datetime as dt
import io
import zipfile
from collections.abc import Iterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from linetap.firmware.errors import LinetapError
from linetap.sync.central.export import audio_of
from linetap.sync.central.web.access import NotVisible, scope_of, visible_recording
from linetap.sync.central.web.audit import audit
from linetap.sync.central.web.pages import error_page

MAX_CALLS = 100


def selected(values: list[str]) -> list[tuple[str, str]] | str:
    """``DEVICE/RECORDING`` values as pairs, or what is wrong with them."""
    if not values:
        return "select at least one call (the boxes in the first column)"
    if len(values) > MAX_CALLS:
        return f"{len(values)} calls selected; a zip holds at most {MAX_CALLS}, so download them in parts"
    pairs = []
    for value in values:
        device, _, recording = value.partition("/")
        if not device or not recording or len(value) > 300:
            return f"{value[:80]!r} is not a call of this console"
        pairs.append((device, recording))
    return pairs


def download(request: Request) -> Response:
    form = request.state.form
    suffix = ".ogg" if form.get("format") == "ogg" else ".wav"
    pairs = selected([str(v) for v in form.getlist("call")])
    if isinstance(pairs, str):
        return error_page(request, 400, "Nothing to download", pairs)
    stored = request.app.state.settings.stored
    scope = scope_of(stored.index, request.state.user)
    if not scope.audio:
        return error_page(request, 403, "No audio for you", "your account may see calls but not hear or download "
                                                            "them; an admin can grant audio")
    try:
        rows = [visible_recording(stored.index, scope, device, recording) for device, recording in pairs]
    except NotVisible as e:
        return error_page(request, 404, "Not found", str(e))
    name = dt.datetime.fromtimestamp(request.app.state.settings.clock.wall(), dt.timezone.utc).strftime(
        "calls-%Y%m%dT%H%M%SZ.zip")
    return StreamingResponse(_zip(request, stored, rows, suffix), media_type="application/zip",
                             headers={"content-disposition": f'attachment; filename="{name}"',
                                      "cache-control": "no-store"})


def _zip(request: Request, stored: Any, rows: list[dict[str, Any]], suffix: str) -> Iterator[bytes]:
    """The zip, streamed as it is made: one call decrypted in memory at a time, nothing written to disk."""
    sink = _Sink()
    problems = []
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED) as zf:
        for row in rows:
            device, rid = row["device_id"], row["recording_id"]
            try:
                audio = audio_of(stored, rid, suffix, device_id=device)[0]
                manifest = stored.store.get(row["manifest_key"])  # checked by audio_of just before
            except LinetapError as e:
                problems.append(f"{device}/{rid}: {e}")
                continue
            zf.writestr(f"{device}/{rid}{suffix}", audio)
            zf.writestr(f"{device}/{rid}.manifest.json", manifest)
            audit(request, "download", device_id=device, recording_id=rid, detail=f"zip {suffix[1:]}")
            yield sink.take()
        if problems:
            zf.writestr("PROBLEMS.txt", "Calls left out of this zip, and why:\n" + "\n".join(problems) + "\n")
    yield sink.take()


class _Sink(io.RawIOBase):
    """Where the zip writes: kept until taken (not seekable, so zipfile writes data descriptors)."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.chunks.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out = b"".join(self.chunks)
        self.chunks.clear()
        return out
