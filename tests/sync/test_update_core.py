"""The box's update core (sans-IO), driven as data: offers, chunks, the shell's answers, ticks.

A :class:`Rig` plays the shell with memory for a disk: it writes chunks into
byte arrays, answers ``CheckFile`` with the real hash of what it wrote and
``Stage`` at once, and keeps every report; a test plays the centre by
answering the requests the core made (:meth:`Rig.serve`).
"""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from linetap.firmware.clock import ManualClock
from linetap.sync import updatewire
from linetap.sync.signed import key_table
from linetap.sync.slotgate import Outcome
from linetap.sync.update import BoxUpdate
from linetap.sync.updateevents import (
    CheckFile, ChunkArrived, Discard, DiskFacts, FileChecked, FinishedSeen, OfferArrived,
    PreparedSeen, Report, RequestChunk, RequestSwitch, SaveOffer, Saved, Stage, StageDone, SwitchRefused,
    Tick, Unstage, WriteChunk)
from updatekit import CHUNK, DEV, OPERATOR, RELEASE_KEY, Bundle

ROOM = 10**9


class Rig:
    """The shell, in memory."""

    def __init__(self, *, current: str = "0.1.0", have: frozenset[str] = frozenset(), free: int = ROOM,
                 reserve: int = 0, rate: int = 0, window: int = 2, release_keys=None, board: str = "sim",
                 saved: Saved | None = None, clock: ManualClock | None = None,
                 parts: dict[str, bytearray] | None = None) -> None:
        self.clock = clock or ManualClock()
        self.disk = DiskFacts(have=have, free_bytes=free, reserve_bytes=reserve)
        self.core = BoxUpdate(device_id=DEV, current=current, board=board, machine="aarch64", python="cp311",
                              operator_keys=key_table([OPERATOR.public_key()]),
                              release_keys=[RELEASE_KEY.public_key()] if release_keys is None else release_keys,
                              clock=self.clock, bandwidth_bytes_s=rate, window=window, chunk_timeout_s=10.0,
                              max_bad_chunks=3)
        self.parts: dict[str, bytearray] = parts or {}
        self.written: dict[str, set[int]] = {}
        self.actions: list = []
        self.staged: list[Stage] = []
        self.run(self.core.start(saved or Saved(), self.disk))
        self.feed(Tick())

    def run(self, actions: list) -> None:
        answers = []
        for action in actions:
            self.actions.append(action)
            if isinstance(action, WriteChunk):
                part = self.parts.setdefault(action.file_sha256, bytearray())
                part.extend(b"\0" * max(0, action.offset + len(action.data) - len(part)))
                part[action.offset:action.offset + len(action.data)] = action.data
                self.written.setdefault(action.file_sha256, set()).add(action.index)
            elif isinstance(action, CheckFile):
                data = bytes(self.parts.get(action.file_sha256, b""))[:action.size]
                answers.append(FileChecked(action.file_sha256, hashlib.sha256(data).hexdigest() ==
                                           action.file_sha256))
            elif isinstance(action, Discard):
                for sha in action.shas:
                    self.parts.pop(sha, None)
                    self.written.pop(sha, None)
            elif isinstance(action, Stage):
                self.staged.append(action)
                answers.append(StageDone())
        for answer in answers:
            self.feed(answer)

    def feed(self, event) -> list:
        before = len(self.actions)
        self.run(self.core.handle(event))
        return self.actions[before:]

    def offer(self, bundle: Bundle, seq: int = 1, **kw) -> list:
        return self.feed(OfferArrived(bundle.offer(seq, **kw), self.disk))

    def of(self, kind: type) -> list:
        return [a for a in self.actions if isinstance(a, kind)]

    def pending(self, since: int = 0) -> list[RequestChunk]:
        return [a for a in self.actions[since:] if isinstance(a, RequestChunk)]

    def serve(self, bundle: Bundle, *, corrupt: int = 0, limit: int = 1000) -> None:
        """Answer requests, in order, until none is left unanswered (the first ``corrupt`` ones damaged)."""
        answered = 0
        while answered < limit:
            requests = self.pending()
            if answered >= len(requests):
                return
            request = requests[answered]
            answered += 1
            if request.release_id != bundle.release_id:
                continue  # asked of an earlier offer
            self.feed(ChunkArrived(bundle.frame(request.file_sha256, request.index, corrupt=corrupt > 0)))
            corrupt -= 1

    @property
    def last(self) -> updatewire.UpdateState:
        return self.of(Report)[-1].state


def test_an_offer_is_fetched_chunk_by_chunk_checked_staged_and_switched_when_prepared():
    rig, bundle = Rig(), Bundle()
    rig.offer(bundle)
    assert rig.core.state == "fetching" and len(rig.pending()) == 2  # the window
    assert rig.last.state == "fetching" and rig.last.release == bundle.release_id and rig.last.total == 15_000
    rig.serve(bundle)
    assert rig.core.state == "preparing" and rig.last.state == "preparing"
    assert len(rig.pending()) == bundle.chunk_total() == 5
    for sha, data in bundle.blobs.items():
        assert bytes(rig.parts[sha]) == data
    assert rig.staged[0].release.release_id == bundle.release_id and rig.staged[0].rollout == "r1"
    assert rig.of(SaveOffer)[0].seq == 1
    actions = rig.feed(PreparedSeen(bundle.version, bundle.release_id))
    assert [type(a) for a in actions] == [Report, RequestSwitch]  # the state goes out before the stop
    assert rig.core.state == "switching" and actions[1].version == "0.2.0"


def test_files_the_box_has_are_not_fetched():
    bundle = Bundle()
    own = bundle.release.files[0].sha256
    rig = Rig(have=frozenset({own}))
    rig.offer(bundle)
    rig.serve(bundle)
    assert {r.file_sha256 for r in rig.pending()} == set(bundle.blobs) - {own}
    assert rig.core.state == "preparing"
    everything = Rig(have=frozenset(bundle.blobs))
    everything.offer(bundle)
    assert everything.core.state == "preparing" and not everything.pending()


def _refusals():
    other = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
    yield "bad-signature", {}, dict(bundle=Bundle(key=other))
    yield "bad-signature", dict(release_keys=[]), {}
    yield "unknown-key", {}, dict(operator=other)
    yield "malformed", {}, dict(body={"release": "x"})
    yield "downgrade", dict(current="0.3.0"), {}
    yield "already-installed", dict(current="0.2.0"), {}
    yield "too-old-to-update", dict(current="0.0.9"), {}
    yield "wrong-board", {}, dict(bundle=Bundle(boards=("pi4-usb",)))
    yield "wrong-platform", {}, dict(bundle=Bundle(machine="x86_64"))
    yield "no-room", dict(free=40_000, reserve=0), {}  # 15,000 x 3 > 40,000
    yield "no-room", dict(free=10**6, reserve=10**6 - 44_000), {}  # the spool's reserve counts


@pytest.mark.parametrize("code, box, offer", list(_refusals()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_refusal_is_reported_with_its_code_and_reason(code, box, offer):
    rig = Rig(**box)
    bundle = offer.pop("bundle", Bundle())
    rig.offer(bundle, **offer)
    state = rig.last
    assert (rig.core.state, state.state, state.outcome, state.code) == ("refused", "refused", "refused", code)
    assert state.reason and not rig.pending() and not rig.of(SaveOffer)
    if box.get("release_keys") == []:
        assert "--release-key" in state.reason  # how to provision it


def test_a_downgrade_the_operator_signed_is_taken():
    rig = Rig(current="0.3.0")
    rig.offer(Bundle(), allow_downgrade=True)
    assert rig.core.state == "fetching"


def test_an_oversized_offer_is_refused_too_large():
    rig = Rig()
    rig.feed(OfferArrived(b"{" + b" " * (updatewire.MAX_OFFER_BYTES + 1), rig.disk))
    assert rig.last.code == "too-large"


def test_a_restart_resumes_with_the_chunks_written():
    first, bundle = Rig(window=4), Bundle()
    first.offer(bundle)
    first.serve(bundle, limit=3)
    written = {sha: frozenset(idx) for sha, idx in first.written.items()}
    assert sum(map(len, written.values())) == 3
    saved = Saved(offer=bundle.offer(1), state=first.last, partial=written)
    second = Rig(window=4, saved=saved, parts={sha: bytearray(first.parts[sha]) for sha in first.parts})
    asked = {(r.file_sha256, r.index) for r in second.pending()}
    assert asked.isdisjoint({(sha, i) for sha, idx in written.items() for i in idx}) and len(asked) == 2
    second.serve(bundle)
    assert second.core.state == "preparing"


def test_a_chunk_that_fails_its_hash_is_fetched_again_and_too_many_fail_the_update():
    rig, bundle = Rig(), Bundle()
    rig.offer(bundle)
    rig.serve(bundle, corrupt=2)
    assert rig.core.state == "preparing" and rig.core.bad_chunks == 2 and len(rig.pending()) == 7
    bad = Rig()
    bad.offer(bundle)
    bad.serve(bundle, corrupt=100, limit=20)
    assert (bad.core.state, bad.last.outcome, bad.last.code) == ("failed", "failed", "hash-mismatch")
    assert len(bad.pending()) == 5  # 4 bad chunks, then it stopped asking


def test_a_repeated_chunk_is_ignored_and_a_missing_one_asked_again_after_the_timeout():
    rig, bundle = Rig(window=1), Bundle()
    rig.offer(bundle)
    (first,) = rig.pending()
    frame = bundle.frame(first.file_sha256, first.index)
    rig.feed(ChunkArrived(frame))
    rig.feed(ChunkArrived(frame))
    assert len(rig.of(WriteChunk)) == 1 and rig.core.repeated_chunks == 1
    second = rig.pending()[-1]
    rig.clock.advance(9.9)
    rig.feed(Tick())
    assert rig.pending()[-1] is second
    rig.clock.advance(0.2)
    rig.feed(Tick())
    assert rig.pending()[-1] == second and rig.pending()[-1] is not second and rig.core.resent_chunks == 1


def test_fetching_pauses_while_recordings_wait_to_be_uploaded():
    rig, bundle = Rig(window=1), Bundle()
    rig.feed(Tick(uploads_pending=True))
    rig.offer(bundle)
    assert rig.core.state == "fetching" and not rig.pending()
    rig.feed(Tick(uploads_pending=False))
    (request,) = rig.pending()
    rig.feed(Tick(uploads_pending=True))
    rig.feed(ChunkArrived(bundle.frame(request.file_sha256, request.index)))  # the one asked still lands
    assert len(rig.of(WriteChunk)) == 1 and len(rig.pending()) == 1
    rig.feed(Tick(uploads_pending=False))
    assert len(rig.pending()) == 2


def test_the_token_bucket_holds_the_upload_cap():
    rate = 2 * (CHUNK + 72)  # two chunk frames a second
    rig, bundle = Rig(window=8, rate=rate), Bundle(sizes=(40_000,))  # ten chunks
    rig.offer(bundle)
    assert len(rig.pending()) == 1
    rig.serve(bundle)
    assert len(rig.pending()) == 1  # answered, but the bucket is empty
    for _ in range(8):
        rig.clock.advance(0.5)
        rig.feed(Tick())
        rig.serve(bundle)
    assert len(rig.pending()) == 9 and rig.core.state == "fetching"  # 1 + 8 in 4 s: 2 a second


def test_a_disconnect_asks_again_for_what_was_in_flight():
    rig, bundle = Rig(), Bundle()
    rig.offer(bundle)
    rig.feed(Tick(connected=False))
    rig.feed(Tick(connected=True))
    assert len(rig.pending()) == 4 and rig.pending()[:2] == rig.pending()[2:]


def test_a_newer_offer_supersedes_the_one_in_progress():
    rig, old, new = Rig(), Bundle("0.2.0"), Bundle("0.2.1", sizes=(6_000,))
    rig.offer(old)
    rig.serve(old, limit=1)
    rig.offer(new, seq=2)
    superseded = [r.state for r in rig.of(Report) if r.state.code == "superseded"]
    assert superseded and superseded[0].release == old.release_id
    assert set(rig.of(Discard)[0].shas) == set(old.blobs)
    assert rig.core.state == "fetching" and rig.last.release == new.release_id and rig.last.code is None
    rig.serve(new)
    assert rig.core.state == "preparing" and rig.staged[-1].release.version == "0.2.1"


def test_a_replayed_or_repeated_offer_changes_nothing():
    rig, bundle = Rig(), Bundle()
    rig.offer(bundle, seq=5)
    assert rig.offer(bundle, seq=5) == []  # retained, delivered again on reconnect
    assert rig.offer(Bundle("0.2.1"), seq=4) == []  # older seq
    assert rig.core.state == "fetching" and rig.last.version == "0.2.0"


def test_an_empty_retained_offer_withdraws():
    rig, bundle = Rig(), Bundle()
    rig.offer(bundle)
    rig.serve(bundle)
    actions = rig.feed(OfferArrived(b"", rig.disk))
    assert rig.core.state == "idle" and rig.last.code == "withdrawn"
    assert any(isinstance(a, Unstage) for a in actions)
    assert [(a.payload, a.seq) for a in actions if isinstance(a, SaveOffer)] == [(None, 1)]


def test_a_refused_offer_does_not_stop_an_install_under_way():
    rig, bundle = Rig(), Bundle()
    rig.offer(bundle)
    rig.offer(Bundle("0.3.0", machine="x86_64"), seq=2)
    assert rig.core.state == "fetching" and rig.last.release == bundle.release_id


def test_the_switch_waits_for_the_line_to_be_idle_and_never_happens_during_a_call():
    rig, bundle = Rig(have=frozenset(Bundle().blobs)), Bundle()
    rig.offer(bundle)
    rig.feed(Tick(call_up=True))
    rig.feed(PreparedSeen(bundle.version, bundle.release_id))
    assert rig.core.state == "waiting-idle" and rig.last.state == "waiting-idle"
    for _ in range(5):
        rig.clock.advance(60)
        rig.feed(Tick(call_up=True))
    assert not rig.of(RequestSwitch)
    rig.feed(Tick(call_up=False))
    assert rig.core.state == "switching" and len(rig.of(RequestSwitch)) == 1
    rig.feed(SwitchRefused())  # a call started as the shell came to switch
    assert rig.core.state == "waiting-idle"
    rig.feed(Tick(call_up=True))
    assert len(rig.of(RequestSwitch)) == 1


def test_a_prepared_file_for_another_release_is_not_switched_to():
    rig, bundle = Rig(have=frozenset(Bundle().blobs)), Bundle()
    rig.offer(bundle)
    rig.feed(PreparedSeen("0.2.0", "0" * 64))
    assert rig.core.state == "preparing"


def test_the_root_sides_outcome_is_reported():
    rig, bundle = Rig(have=frozenset(Bundle().blobs)), Bundle()
    rig.offer(bundle)
    rig.feed(FinishedSeen(Outcome("0.2.0", bundle.release_id, "failed", "prepare-failed", "pip: no wheel", 1)))
    assert (rig.last.state, rig.last.outcome, rig.last.code) == ("failed", "failed", "prepare-failed")


def test_after_a_restart_the_trial_then_the_outcome_is_reported_and_the_retained_offer_is_not_taken_again():
    bundle = Bundle()
    switching = updatewire.UpdateState(state="switching", current="0.1.0", version="0.2.0",
                                       release=bundle.release_id)
    trial = Rig(current="0.2.0", saved=Saved(offer=bundle.offer(1), state=switching, trial="0.2.0"))
    assert trial.core.state == "trial" and trial.last.state == "trial"
    trial.feed(FinishedSeen(Outcome("0.2.0", bundle.release_id, "installed", None, "", 5)))
    assert (trial.last.state, trial.last.outcome, trial.last.current) == ("installed", "installed", "0.2.0")
    back = Outcome("0.2.0", bundle.release_id, "rolled-back", "selftest-failed", "spool not writable", 2)
    old = Rig(current="0.1.0", saved=Saved(offer=bundle.offer(1), state=switching, finished=back))
    assert (old.last.state, old.last.code, old.last.reason) == ("rolled-back", "selftest-failed",
                                                                 "spool not writable")
    assert old.offer(bundle) == [] and old.core.state == "rolled-back"


def test_an_offer_during_the_trial_waits_for_the_outcome():
    bundle, newer = Bundle(), Bundle("0.2.1")
    saved = Saved(offer=bundle.offer(1), trial="0.2.0")
    rig = Rig(current="0.2.0", saved=saved)
    rig.offer(newer, seq=2)
    assert rig.core.state == "trial"
    rig.feed(FinishedSeen(Outcome("0.2.0", bundle.release_id, "installed", None, "", 3)))
    assert rig.core.state == "fetching" and rig.last.version == "0.2.1"
