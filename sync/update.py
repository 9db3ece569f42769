"""The box's side of a remote update, sans-IO: offer in, chunks requested and written, staged, switched.

h11's manner, like :mod:`linetap.firmware.callflow`: :class:`BoxUpdate` takes
events (:mod:`linetap.sync.updateevents`: an offer, a chunk, the shell's
answers, what the root side wrote, a :class:`Tick` with the conditions) and
returns actions, which :mod:`linetap.sync.updater` runs in order. Every
transition is one row of :data:`TABLE`: (state, event type) -> handler, the
next state, and the outcomes that pick another. :meth:`BoxUpdate.handle`
alone sets the state, and reports it (:class:`Report`) whenever it or the
outcome changes, and every :data:`PROGRESS_S` while fetching.

::

    idle ─offer─► fetching ─all files checked─► staged ─StageDone─► preparing ─prepared.json─► switching
      ▲  (refused: named code)  │ (nothing to fetch: staged)                     └─call up─► waiting-idle
      └──── withdrawn ◄─────────┘                                                               │ idle
    switching ──restart, gate──► trial ──outcome.json──► installed | rolled-back | refused | failed

Offers. The envelope is opened with the operator keys (kind ``update``, seq
only forward), its body read (:func:`updatewire.read_offer`), the release
verified with the release keys (:func:`release.verify`: without one every
offer is ``bad-signature``), judged (:func:`release.judge`) and held against
the disk: ``no-room`` when 3x the bytes still to fetch would cut into the
spool's reserve. The same envelope again (retained, on every reconnect)
changes nothing; a newer one supersedes the one in progress (``superseded``,
its partial files discarded); an empty one withdraws it (``withdrawn``). An
offer refused while an install is under way is only logged; in
``switching`` and ``trial`` a new offer waits for the outcome.

Fetching. Only files the box lacks (by sha256: fetched, factory wheels, kept
versions: the shell's :class:`DiskFacts`) are fetched, chunk by chunk: at most
``window`` requests in flight, a request that was not answered within
``chunk_timeout_s`` asked again, a virtual-time token bucket at the upload cap,
and nothing new asked while recordings wait to be uploaded (the uploader and
the fetch never run at once, so the cap holds for both). Each chunk is checked
against the signed digests before it is written; one that fails is asked
again and counted, and past ``max_bad_chunks`` the update fails
``hash-mismatch``. A repeated chunk is ignored. The chunks written are kept
(``Saved.partial``), so a restart resumes where it stopped.

Switching. Once the root side's ``prepared.json`` names the release, the
switch is asked for only on a tick with no call up or starting; if a call is
up the box waits (``waiting-idle``) for as long as it lasts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from linetap.firmware.clock import Clock
from linetap.firmware.errors import SyncError
from linetap.sync import release, updatewire
from linetap.sync.signed import EnvelopeRefused, open_envelope
from linetap.sync.updateevents import (
    Action, CheckFile, ChunkArrived, Discard, DiskFacts, Event, FileChecked, FinishedSeen,
    OfferArrived, PreparedSeen, Report, RequestChunk, RequestSwitch, SaveOffer, Saved, Stage, StageDone,
    SwitchRefused, Tick, Unstage, WriteChunk)
from linetap.sync.updatewire import UpdateState

logger = logging.getLogger(__name__)

WINDOW = 4  # chunk requests in flight: 512 KiB at most
CHUNK_TIMEOUT_S = 30.0
MAX_BAD_CHUNKS = 8
PROGRESS_S = 5.0
ROOM_FACTOR = 3  # the fetched file, its staged copy (when it cannot be linked) and the installed venv

TERMINAL = ("installed", "rolled-back", "refused", "failed")
ACTIVE = ("fetching", "staged", "preparing", "prepared", "waiting-idle")
HELD = ("switching", "trial")
STAY = "stay"  # an outcome: the state does not change


@dataclass(frozen=True)
class _Accepted:
    payload: bytes
    seq: int
    offer: updatewire.Offer
    release: release.Release


class _Refused(SyncError):
    """An offer is not taken; ``code`` is one of :data:`updatewire.CODES`."""

    def __init__(self, code: str, reason: str, subject: release.Release | None = None) -> None:
        super().__init__(reason)
        self.code, self.reason, self.subject = code, reason, subject


class BoxUpdate:
    """The update state machine of one box. Not thread-safe: the shell's one thread feeds it."""

    def __init__(self, *, device_id: str, current: str, board: str, machine: str, python: str,
                 operator_keys: Mapping[str, Ed25519PublicKey], release_keys: Iterable[Ed25519PublicKey],
                 clock: Clock, bandwidth_bytes_s: int = 0, window: int = WINDOW,
                 chunk_timeout_s: float = CHUNK_TIMEOUT_S, max_bad_chunks: int = MAX_BAD_CHUNKS) -> None:
        self.device_id, self.current, self._board, self._machine, self._python = (device_id, current, board,
                                                                                  machine, python)
        self._operator_keys, self._release_keys = dict(operator_keys), list(release_keys)
        self._clock = clock
        self._rate, self._window = bandwidth_bytes_s, window
        self._timeout, self._max_bad = chunk_timeout_s, max_bad_chunks
        self.state = "idle"
        self._accepted: _Accepted | None = None
        self._subject: tuple[str | None, str | None, str | None] = (None, None, None)  # version, release, rollout
        self._result: tuple[str | None, str | None, str | None] = (None, None, None)  # outcome, code, reason
        self._kept_seq = 0
        self._need: dict[str, release.ReleaseFile] = {}
        self._got: dict[str, set[int]] = {}
        self._inflight: dict[tuple[str, int], float] = {}
        self._bucket_at = 0.0
        self.bad_chunks = self.repeated_chunks = self.resent_chunks = 0
        self._uploads_pending, self._call_up, self._connected = False, False, False
        self._deferred: OfferArrived | None = None
        self._reported: UpdateState | None = None
        self._reported_at = 0.0
        self._actions: list[Action] = []

    # ------------------------------------------------------------ entry points --

    def start(self, saved: Saved, disk: DiskFacts) -> list[Action]:
        """Take up what a restart left (the kept offer, the chunks written, the root side's files)."""
        self._actions = []
        self._kept_seq = saved.seq
        if saved.state is not None and saved.state.outcome is not None:
            self._result = (saved.state.outcome, saved.state.code, saved.state.reason)
            self._subject = (saved.state.version, saved.state.release, saved.state.rollout)
        if saved.offer is not None:
            self.state = self._resume(saved, disk)
        return self._finish(force=True)

    def handle(self, event: Event) -> list[Action]:
        """Apply one event; return what the shell must do, in order."""
        self._actions = []
        row = TABLE.get((self.state, type(event)))
        if row is None:
            logger.debug("update event ignored event=%s state=%s", type(event).__name__, self.state)
            return []
        outcome = row.handler(self, event)
        if outcome != STAY:
            self.state = row.to if outcome is None else row.unless[outcome]
        actions = self._finish()
        if self._deferred is not None and self.state in TERMINAL + ("idle",):
            deferred, self._deferred = self._deferred, None
            actions += self.handle(deferred)
        return actions

    def report(self) -> UpdateState:
        """The state as it is now (the shell publishes it on every connect)."""
        version, release_id, rollout = self._subject
        have = total = 0
        if self._accepted is not None:
            rel = self._accepted.release
            total = sum(f.size for f in rel.files)
            have = total - sum(f.size for f in self._need.values()) + sum(
                release.chunk_span(rel, f, i)[1] for sha, f in self._need.items() for i in self._got.get(sha, ()))
        outcome, code, reason = self._result
        return UpdateState(state=self.state, current=self.current, version=version, release=release_id,
                           rollout=rollout, have=have, total=total, outcome=outcome, code=code, reason=reason,
                           at_ms=int(self._clock.wall() * 1000))

    # ----------------------------------------------------------------- helpers --

    def _do(self, *actions: Action) -> None:
        self._actions.extend(actions)

    def _finish(self, *, force: bool = False) -> list[Action]:
        """The actions, with a :class:`Report` before any switch when the state is worth reporting."""
        now = self._clock.monotonic()
        state = self.report()
        last = self._reported
        changed = force or last is None or replace(last, at_ms=0, have=0) != replace(state, at_ms=0, have=0)
        progress = last is not None and state.have != last.have and now - self._reported_at >= PROGRESS_S
        actions = [a for a in self._actions if not isinstance(a, RequestSwitch)]
        if changed or progress:
            self._reported, self._reported_at = state, now
            actions.append(Report(state))
        actions += [a for a in self._actions if isinstance(a, RequestSwitch)]
        self._actions = []
        return actions

    def _open(self, payload: bytes, *, now_ms: int | None) -> _Accepted:
        """The offer in ``payload``, checked but for its sequence and this box's judgement."""
        try:
            envelope = open_envelope(payload, trusted_keys=self._operator_keys, device_id=self.device_id,
                                     kind="update", now_ms=now_ms, max_bytes=updatewire.MAX_OFFER_BYTES)
        except EnvelopeRefused as e:
            code = e.code if e.code in ("unknown-key", "bad-signature") else \
                "too-large" if e.code == "oversized" else "malformed"
            raise _Refused(code, f"update offer envelope refused: {e}") from None
        try:
            offer = updatewire.read_offer(envelope.body)
            rel = release.verify(offer.manifest, offer.signature, self._release_keys)
        except release.ReleaseError as e:
            raise _Refused(e.code, str(e)) from None
        return _Accepted(payload=bytes(payload), seq=envelope.seq or 0, offer=offer, release=rel)

    def _judge(self, accepted: _Accepted, disk: DiskFacts, partial: Mapping[str, Iterable[int]]) -> None:
        rel = accepted.release
        refusal = release.judge(rel, current=self.current, board=self._board, machine=self._machine,
                                python=self._python, allow_downgrade=accepted.offer.allow_downgrade)
        if refusal is not None:
            raise _Refused(refusal.code, refusal.reason, rel)
        missing = sum(f.size for f in rel.files if f.sha256 not in disk.have) - sum(
            release.chunk_span(rel, f, i)[1] for f in rel.files if f.sha256 not in disk.have
            for i in _valid(partial.get(f.sha256, ()), f))
        room = disk.free_bytes - disk.reserve_bytes
        if missing * ROOM_FACTOR > room:
            raise _Refused("no-room", f"release {rel.version} needs {missing * ROOM_FACTOR} bytes free "
                                     f"({ROOM_FACTOR} x the {missing} still to fetch) and the data partition "
                                     f"has {max(room, 0)} above the spool's reserve; free space or lower "
                                     "spool.min_free_mb", rel)

    def _refuse(self, refused: _Refused, seq: int = 0) -> str:
        """An offer not taken: reported when nothing is under way, logged while something is."""
        logger.warning("update offer refused code=%s reason=%s", refused.code, refused.reason)
        if self.state in ACTIVE or self.state in HELD:
            return STAY
        rel = refused.subject
        self._subject = (rel.version, rel.release_id, None) if rel is not None else (None, None, None)
        self._result = ("refused", refused.code, refused.reason)
        self._accepted = None
        return "refused"

    def _fail(self, code: str, reason: str) -> str:
        logger.error("update failed code=%s reason=%s", code, reason)
        self._result = ("failed", code, reason)
        self._inflight.clear()
        return "failed"

    def _drop(self, code: str, reason: str, keep: Iterable[str] = ()) -> None:
        """Give up the accepted offer (superseded or withdrawn): its request and partial files go."""
        accepted = self._accepted
        assert accepted is not None
        logger.info("update dropped release=%s code=%s", accepted.release.release_id[:16], code)
        if self.state in ("preparing", "prepared", "waiting-idle", "staged"):
            self._do(Unstage(accepted.release.release_id))
        partial = tuple(sha for sha in self._need if sha not in set(keep))
        if partial:
            self._do(Discard(partial))
        self._result = (None, code, reason)
        self._accepted, self._need, self._got = None, {}, {}
        self._inflight.clear()

    # -------------------------------------------------------------------- offers --

    def _offer(self, event: OfferArrived) -> str | None:
        accepted = self._accepted
        if not event.payload:
            return self._withdraw()
        if accepted is not None and event.payload == accepted.payload:
            return STAY
        if self.state in HELD:
            logger.info("update offer held until the install under way has an outcome state=%s", self.state)
            self._deferred = event
            return STAY
        now_ms = int(self._clock.wall() * 1000) if self._clock.synced() else None
        try:
            new = self._open(event.payload, now_ms=now_ms)
            if new.seq <= self._kept_seq:
                logger.warning("update offer seq=%d not above %d, the last accepted: a replay, ignored",
                               new.seq, self._kept_seq)
                return STAY
            self._judge(new, event.disk, {} if accepted is None or accepted.release.release_id !=
                        new.release.release_id else self._got)
        except _Refused as e:
            return self._refuse(e)
        return self._accept(new, event.disk)

    def _accept(self, new: _Accepted, disk: DiskFacts) -> str:
        old, same = self._accepted, None
        if old is not None and old.release.release_id == new.release.release_id:
            same = self._got
        elif old is not None and self.state in ACTIVE:
            superseded = self.report()
            self._drop("superseded", f"superseded by release {new.release.version}",
                       keep={f.sha256 for f in new.release.files})
            self._do(Report(replace(superseded, state="idle", outcome=None, code="superseded",
                                    reason=f"superseded by release {new.release.version}")))
        self._accepted, self._kept_seq = new, new.seq
        self._subject = (new.release.version, new.release.release_id, new.offer.rollout)
        self._result = (None, None, None)
        logger.info("update offer accepted version=%s release=%s rollout=%s", new.release.version,
                    new.release.release_id[:16], new.offer.rollout)
        self._do(SaveOffer(new.payload, new.seq))
        return self._begin(disk.have, same or {})

    def _withdraw(self) -> str | None:
        if self._accepted is None or self.state in TERMINAL or self.state in HELD:
            return STAY
        self._drop("withdrawn", "the operator withdrew the offer")
        self._do(SaveOffer(None, self._kept_seq))
        return "idle"

    def _resume(self, saved: Saved, disk: DiskFacts) -> str:
        """The state after a restart with an accepted offer kept."""
        try:
            accepted = self._open(saved.offer or b"", now_ms=None)  # judged when it came; it may expire meanwhile
        except _Refused as e:
            self._result = ("refused", e.code, e.reason)
            return "refused"
        self._accepted, self._kept_seq = accepted, max(accepted.seq, saved.seq)
        rel = accepted.release
        self._subject = (rel.version, rel.release_id, accepted.offer.rollout)
        finished, last = saved.finished, saved.state
        if finished is not None and finished.release_id == rel.release_id:
            self._result = (finished.outcome, finished.code, finished.reason or None)
            return finished.outcome
        if saved.trial == rel.version == self.current:
            return "trial"
        if last is not None and last.release == rel.release_id and last.state in TERMINAL:
            self._result = (last.outcome, last.code, last.reason)
            return last.state
        try:
            self._judge(accepted, disk, saved.partial)
        except _Refused as e:
            self._result = ("refused", e.code, e.reason)
            return "refused"
        self._result = (None, None, None)
        return self._begin(disk.have, saved.partial)

    # ------------------------------------------------------------------ fetching --

    def _begin(self, have: frozenset[str], partial: Mapping[str, Iterable[int]]) -> str:
        rel = self._accepted.release
        self._need = {f.sha256: f for f in rel.files if f.sha256 not in have}
        self._got = {sha: _valid(partial.get(sha, ()), f) for sha, f in self._need.items()}
        self._inflight.clear()
        self.bad_chunks = 0
        for sha, f in self._need.items():
            if len(self._got[sha]) == len(f.chunks):
                self._do(CheckFile(sha, f.size))
        if not self._need:
            return self._stage()
        self._fill()
        return "fetching"

    def _stage(self) -> str:
        accepted = self._accepted
        self._do(Stage(accepted.release, accepted.offer.signature, accepted.offer.allow_downgrade,
                       accepted.offer.rollout, accepted.payload))
        return "staged"

    def _fill(self) -> None:
        """Ask for the chunks that may be asked for now: window, bucket, uploads first, timeouts."""
        if not self._connected or self._uploads_pending or self._accepted is None:
            return
        now = self._clock.monotonic()
        for key, sent in list(self._inflight.items()):
            if now - sent >= self._timeout:
                del self._inflight[key]
                self.resent_chunks += 1
        rel = self._accepted.release
        for sha, f in self._need.items():
            for index in range(len(f.chunks)):
                if index in self._got[sha] or (sha, index) in self._inflight:
                    continue
                if len(self._inflight) >= self._window or (self._rate and self._bucket_at > now):
                    return
                self._do(RequestChunk(rel.release_id, sha, index))
                self._inflight[(sha, index)] = now
                if self._rate:
                    cost = release.chunk_span(rel, f, index)[1] + release.FRAME_HEADER
                    self._bucket_at = max(self._bucket_at, now) + cost / self._rate

    def _chunk(self, event: ChunkArrived) -> str | None:
        rel = self._accepted.release
        try:
            chunk = release.unpack_chunk(event.frame)
        except release.ReleaseError as e:
            logger.warning("update chunk refused reason=%s", e)
            return STAY
        f = self._need.get(chunk.file_sha256) if chunk.release_id == rel.release_id else None
        if f is None or chunk.index in self._got[f.sha256] or chunk.index >= len(f.chunks):
            self.repeated_chunks += 1  # repeated, for a file on hand, or for another release: nothing to do
            return STAY
        try:
            release.check_chunk(rel, chunk)
        except release.ReleaseError as e:
            self._inflight.pop((f.sha256, chunk.index), None)
            return self._bad(str(e))
        self._inflight.pop((f.sha256, chunk.index), None)
        self._got[f.sha256].add(chunk.index)
        self._fill()  # the next requests go out before this chunk is written: network and disk overlap
        offset, _ = release.chunk_span(rel, f, chunk.index)
        self._do(WriteChunk(f.sha256, chunk.index, offset, chunk.data))
        if len(self._got[f.sha256]) == len(f.chunks):
            self._do(CheckFile(f.sha256, f.size))
        return STAY

    def _bad(self, reason: str) -> str:
        self.bad_chunks += 1
        logger.warning("update chunk does not match the signed release count=%d reason=%s",
                       self.bad_chunks, reason)
        if self.bad_chunks > self._max_bad:
            return self._fail("hash-mismatch", f"{self.bad_chunks} chunks or files did not match the signed "
                                               f"release (last: {reason}); the offer must be sent again")
        self._fill()
        return STAY

    def _checked(self, event: FileChecked) -> str | None:
        f = self._need.get(event.sha256)
        if f is None:
            return STAY
        if not event.ok:
            self._got[f.sha256] = set()
            self._do(Discard((f.sha256,)))
            return self._bad(f"file {f.name} assembled does not have the signed sha256")
        del self._need[f.sha256], self._got[f.sha256]
        return self._stage() if not self._need else STAY

    def _tick(self, event: Tick) -> str | None:
        if event.connected and not self._connected:
            self._inflight.clear()  # what was asked on the last connection may be lost: ask again
        self._uploads_pending, self._call_up, self._connected = (event.uploads_pending, event.call_up,
                                                                 event.connected)
        if self.state == "fetching":
            self._fill()
        elif self.state == "waiting-idle" and not self._call_up:
            return self._switch()
        return STAY

    # ------------------------------------------------------------- installing --

    def _staged(self, event: StageDone) -> str | None:
        if event.error is not None:
            return self._fail("no-room", f"staging release {self._accepted.release.version} failed: "
                                         f"{event.error}")
        return None

    def _prepared(self, event: PreparedSeen) -> str | None:
        rel = self._accepted.release
        if (event.version, event.release_id) != (rel.version, rel.release_id):
            return STAY
        if self._call_up:
            logger.info("update prepared version=%s; waiting for the line to be idle", rel.version)
            return "waiting-idle"
        return self._switch()

    def _switch(self) -> str:
        rel = self._accepted.release
        logger.warning("update switch requested version=%s release=%s", rel.version, rel.release_id[:16])
        self._do(RequestSwitch(rel.version, rel.release_id))
        return "switching"

    def _finished(self, event: FinishedSeen) -> str | None:
        finished = event.finished
        accepted = self._accepted
        if accepted is None or finished.release_id != accepted.release.release_id \
                or finished.outcome not in updatewire.OUTCOMES:
            return STAY
        result = (finished.outcome, finished.code, finished.reason or None)
        if self._result == result and self.state in TERMINAL:
            return STAY
        self._result = result
        self._inflight.clear()
        return finished.outcome

    def _wait_again(self, _event: SwitchRefused) -> None:
        logger.info("update switch postponed: a call started")


def _valid(indexes: Iterable[int], f: release.ReleaseFile) -> set[int]:
    return {i for i in indexes if isinstance(i, int) and 0 <= i < len(f.chunks)}


# --------------------------------------------------------------------- table --

class Row(NamedTuple):
    """One transition: run ``handler``, then go to ``to``, or to ``unless[outcome]`` when it names one."""

    handler: Callable[[BoxUpdate, Any], str | None]
    to: str
    unless: Mapping[str, str] = {}


_H = BoxUpdate
OFFER = {"refused": "refused", "idle": "idle", "fetching": "fetching", "staged": "staged"}
ENDS = {outcome: outcome for outcome in updatewire.OUTCOMES}
FAILED = {"failed": "failed"}

#: Every (state, event type) the machine acts on; any other pair is ignored.
TABLE: dict[tuple[str, type], Row] = {
    ("fetching", ChunkArrived): Row(_H._chunk, "fetching", {**FAILED, "staged": "staged"}),
    ("fetching", FileChecked): Row(_H._checked, "fetching", {**FAILED, "staged": "staged"}),
    ("staged", StageDone): Row(_H._staged, "preparing", FAILED),
    ("preparing", PreparedSeen): Row(_H._prepared, "prepared", {"waiting-idle": "waiting-idle",
                                                                "switching": "switching"}),
    ("switching", SwitchRefused): Row(_H._wait_again, "waiting-idle"),
}
for _state in updatewire.STATES:
    TABLE[(_state, OfferArrived)] = Row(_H._offer, _state, OFFER)
    TABLE[(_state, Tick)] = Row(_H._tick, _state, {"switching": "switching"})
    TABLE[(_state, FinishedSeen)] = Row(_H._finished, _state, ENDS)
