"""The call page's audio and waveform: ``audio.ogg`` streamed from the encrypted segments, ``peaks.json``.

``audio.ogg`` is the recording's one Ogg Opus stream, decrypted in memory
and only where asked: a ``Range`` request decrypts the segments that hold
its bytes (:mod:`~linetap.sync.central.media`), so Chromium's bisecting seek
into minute 45 of an hour-long call costs a segment or two per step. The
file's size comes from the segments' plaintext sizes: kept beside the
peaks, or derived from each ciphertext's size and age header, never by
decrypting; each recording's sizes are cached (:class:`Playback`), and so
are the segments decrypted lately, in memory only (64 MiB), because a
seeking browser asks for the same ones again and again. Each decrypted
segment is checked against the size it was said to have.

Every request passes :func:`~linetap.sync.central.web.access.visible_recording`
(an id the user may not see is answered as one that does not exist); audio
also needs the scope's ``audio`` (auditors without a grant get 403). One
``listen`` entry goes to the access log per listen, not per Range request
(:class:`~linetap.sync.central.media.ListenSessions`, keyed by the player's
token). Plaintext never touches disk; responses are ``no-store``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import pyrage
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from linetap.sync.central.keys import load_identity
from linetap.sync.central.media import (ListenSessions, PlaintextCache, RangeNotSatisfiable, SegmentMap,
                                        SizeCache, age_header_length, age_plaintext_size, content_range,
                                        listen_token, parse_range)
from linetap.sync.central.peaks import Peaks, PeaksError, markers
from linetap.sync.central.stored import IntegrityError, Stored
from linetap.sync.central.web.access import scope_of, visible_recording
from linetap.sync.central.web.audit import audit
from linetap.sync.central.web.pages import error_page

logger = logging.getLogger(__name__)

AUDIO_TYPE = "audio/ogg"
CHUNK = 256 * 1024  # bytes handed to the server at a time (segments are ~30 KB at 24 kbit/s and 10 s)


class Playback:
    """The app's playback state, shared by its worker threads: the central identity, sizes, listens."""

    def __init__(self, stored: Stored) -> None:
        self.stored = stored
        self._identity: pyrage.x25519.Identity | None = None
        self._sizes = SizeCache()
        self._listens = ListenSessions()
        self._plaintexts = PlaintextCache()
        self._lock = threading.Lock()

    def identity(self) -> pyrage.x25519.Identity:
        if self._identity is None:
            self._identity = load_identity(self.stored.data_dir)
        return self._identity

    def segment_map(self, row: dict[str, Any]) -> SegmentMap:
        """The recording's plaintext layout (cached per recording and manifest)."""
        key = (row["device_id"], row["recording_id"], row["manifest_sha256"])
        with self._lock:
            found = self._sizes.get(key)
        if found is not None:
            return found
        entries = self.stored.checked_manifest(row)["segments"]
        sizes = self._kept_sizes(row, len(entries))
        if sizes is None:
            sizes = [self._derived_size(row, entry) for entry in entries]
        made = SegmentMap(sizes, entries)
        with self._lock:
            self._sizes.put(key, made)
        return made

    def _kept_sizes(self, row: dict[str, Any], count: int) -> list[int] | None:
        kept = self.stored.index.peaks(row["device_id"], row["recording_id"])
        if kept is None or kept["data"] is None:
            return None
        try:
            sizes = list(Peaks.from_bytes(kept["data"]).sizes)
        except PeaksError:
            return None
        return sizes if len(sizes) == count else None

    def _derived_size(self, row: dict[str, Any], entry: dict[str, Any]) -> int:
        data = self.stored.checked_segment(row, entry)
        return age_plaintext_size(len(data), age_header_length(data))

    def forget(self, row: dict[str, Any]) -> None:
        with self._lock:
            self._sizes.drop((row["device_id"], row["recording_id"], row["manifest_sha256"]))

    def first_of_listen(self, key: tuple[str, str, str, str], now_ms: int) -> bool:
        with self._lock:
            return self._listens.first(key, now_ms)

    def stream(self, row: dict[str, Any], segments: SegmentMap, first: int, last: int) -> Iterator[bytes]:
        """Bytes ``first`` to ``last`` of the plaintext file, a segment at a time (runs in a worker thread)."""
        batch: list[bytes] = []
        size = 0
        for piece in segments.pieces(first, last):
            plaintext = self._plaintext(row, segments, piece.index)
            batch.append(plaintext if piece.start == 0 and piece.stop == len(plaintext) else
                         plaintext[piece.start:piece.stop])
            size += piece.stop - piece.start
            if size >= CHUNK:  # one hand-over to the event loop per CHUNK, not per segment
                yield b"".join(batch)
                batch, size = [], 0
        if batch:
            yield b"".join(batch)

    def _plaintext(self, row: dict[str, Any], segments: SegmentMap, index: int) -> bytes:
        key = (row["device_id"], row["recording_id"], row["manifest_sha256"], index)
        with self._lock:
            found = self._plaintexts.get(key)
        if found is not None:
            return found
        data = self.stored.checked_segment(row, segments.entries[index])
        plaintext = pyrage.decrypt(data, [self.identity()])
        if len(plaintext) != segments.sizes[index]:
            self.forget(row)
            raise IntegrityError(f"segment {index} of recording {row['recording_id']} decrypted to "
                                 f"{len(plaintext)} bytes, not the {segments.sizes[index]} expected")
        with self._lock:
            self._plaintexts.put(key, plaintext)
        return plaintext


def playback(request: Request) -> Playback:
    state = request.app.state
    found = getattr(state, "playback", None)
    if found is None:
        found = state.playback = Playback(state.settings.stored)
    return found


def _visible(request: Request) -> tuple[dict[str, Any], Any]:
    stored = request.app.state.settings.stored
    scope = scope_of(stored.index, request.state.user)
    row = visible_recording(stored.index, scope, request.path_params["device_id"],
                            request.path_params["recording_id"])
    return row, scope


def _gone(request: Request, row: dict[str, Any]) -> Response | None:
    if row["erased_ms"] is not None:
        return error_page(request, 410, "Erased", f"this recording was erased ({row['erase_reason']}); "
                                                  "its tombstone is on the evidence panel")
    if not row["segments"]:
        return error_page(request, 404, "No audio", "this call kept no audio (opted out, discarded or "
                                                    "never recorded); its evidence is on the call page")
    return None


def audio(request: Request) -> Response:
    """``GET .../audio.ogg``: the whole stream, or the one byte range asked for (206; 416 outside it)."""
    row, scope = _visible(request)
    if not scope.audio:
        return error_page(request, 403, "No audio for your role", "you may see this call's details and "
                                                                  "evidence, not hear it; ask an admin to "
                                                                  "grant you audio")
    refused = _gone(request, row)
    if refused is not None:
        return refused
    play = playback(request)
    segments = play.segment_map(row)
    size = segments.total
    try:
        wanted = parse_range(request.headers.get("range"), size)
    except RangeNotSatisfiable as e:
        return Response(f"{e}\n", status_code=416, media_type="text/plain",
                        headers={"content-range": f"bytes */{size}", "accept-ranges": "bytes"})
    user = request.state.user["name"]
    token = listen_token(request.query_params.get("listen"))
    if play.first_of_listen((user, row["device_id"], row["recording_id"], token), play.stored.now_ms()):
        audit(request, "listen", device_id=row["device_id"], recording_id=row["recording_id"], detail="play")
    first, last = wanted if wanted is not None else (0, size - 1)
    headers = {"accept-ranges": "bytes", "cache-control": "no-store", "content-length": str(last - first + 1)}
    if wanted is not None:
        headers["content-range"] = content_range(first, last, size)
    body = play.stream(row, segments, first, last) if size else iter(())
    return StreamingResponse(body, status_code=206 if wanted is not None else 200, media_type=AUDIO_TYPE,
                             headers=headers)


def peaks(request: Request) -> Response:
    """``GET .../peaks.json``: two lanes of min/max per bucket, the markers, or why there are none yet."""
    row, _scope = _visible(request)
    refused = _gone(request, row)
    if refused is not None:
        return refused
    stored = request.app.state.settings.stored
    manifest = stored.checked_manifest(row)
    audio_info = manifest.get("audio") if isinstance(manifest.get("audio"), dict) else {}
    rate = manifest.get("codec", {}).get("rate")
    frames = audio_info.get("frames")
    duration_ms = frames * 1000 // rate if isinstance(frames, int) and isinstance(rate, int) and rate > 0 \
        else row["duration_ms"]
    body: dict[str, Any] = {"duration_ms": duration_ms, "markers": markers(manifest)}
    kept = stored.index.peaks(row["device_id"], row["recording_id"])
    if kept is None:
        body["pending"] = "the waveform is made shortly after the call is stored; reload in a minute"
    elif kept["data"] is None:
        body["problem"] = f"no waveform: {kept['problem']}"
    else:
        body.update(Peaks.from_bytes(kept["data"]).as_json())
    return JSONResponse(body, headers={"cache-control": "no-store"})


def routes() -> list[Route]:
    base = "/calls/{device_id}/{recording_id}"
    return [Route(f"{base}/audio.ogg", audio, methods=["GET"], name="media_audio"),
            Route(f"{base}/peaks.json", peaks, methods=["GET"], name="media_peaks")]
