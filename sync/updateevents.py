"""What goes into the box's update core and what comes out: events, facts and actions.

The core is :mod:`linetap.sync.update`; the shell that feeds it and runs its
actions is :mod:`linetap.sync.updater`. Every value here is a frozen
dataclass, so a test writes the core's inputs and expected outputs as data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from linetap.sync.release import Release
from linetap.sync.slotgate import Outcome
from linetap.sync.updatewire import UpdateState


# ----------------------------------------------------------------- facts --

@dataclass(frozen=True)
class DiskFacts:
    """What the box has and how much room it has, read by the shell when an offer comes."""

    have: frozenset[str] = frozenset()  # sha256 of the files on hand (fetched, factory, kept versions)
    free_bytes: int = 0  # free on the data partition
    reserve_bytes: int = 0  # what the spool keeps free for recordings (spool.min_free_mb)


@dataclass(frozen=True)
class Saved:
    """What the shell kept across a restart: the accepted offer, the last state, the chunks written."""

    offer: bytes | None = None  # the accepted envelope's bytes
    seq: int = 0  # the highest offer seq accepted (kept when an offer is withdrawn)
    state: UpdateState | None = None  # the last state published
    partial: Mapping[str, frozenset[int]] = field(default_factory=dict)  # file sha256 -> chunk indexes written
    trial: str | None = None  # the version on trial, when it is the one running (``<app>/trial.json``)
    finished: Outcome | None = None  # root's last outcome (``<app>/outcome.json``)


# ---------------------------------------------------------------- events --

@dataclass(frozen=True)
class OfferArrived:
    """A message on ``update/offer``: an operator envelope, or empty (the offer withdrawn)."""

    payload: bytes = field(repr=False)
    disk: DiskFacts = DiskFacts()


@dataclass(frozen=True)
class ChunkArrived:
    """A frame on ``update/chunk`` (:func:`linetap.sync.release.pack_chunk`)."""

    frame: bytes = field(repr=False)


@dataclass(frozen=True)
class FileChecked:
    """The shell's answer to :class:`CheckFile`: the whole file's SHA-256 is (not) the signed one."""

    sha256: str
    ok: bool


@dataclass(frozen=True)
class StageDone:
    """The shell's answer to :class:`Stage`; ``error`` says why staging failed (disk full, say)."""

    error: str | None = None


@dataclass(frozen=True)
class PreparedSeen:
    """``<app>/prepared.json`` names ``version`` / ``release_id``: the root side built it."""

    version: str
    release_id: str


@dataclass(frozen=True)
class FinishedSeen:
    """``<app>/outcome.json`` changed."""

    finished: Outcome


@dataclass(frozen=True)
class SwitchRefused:
    """The shell found the line busy when it came to write ``switch.json``; wait again."""


@dataclass(frozen=True)
class Tick:
    """Time passed; the conditions fetching and switching depend on, as they are now."""

    uploads_pending: bool = False  # recordings wait to be uploaded: they go first
    call_up: bool = False  # a call is up or starting (ringing): never switch now
    connected: bool = True  # the link is up


Event = (OfferArrived | ChunkArrived | FileChecked | StageDone | PreparedSeen | FinishedSeen | SwitchRefused
         | Tick)


# --------------------------------------------------------------- actions --

@dataclass(frozen=True)
class SaveOffer:
    """Keep the accepted offer's envelope durably (``offer.json``) before what follows; None forgets it
    (withdrawn) but keeps ``seq``, the highest accepted, so an older offer is never taken again."""

    payload: bytes | None = field(repr=False)
    seq: int = 0


@dataclass(frozen=True)
class Report:
    """Publish ``state`` on ``update/state`` (retained) and keep it as ``state.json``."""

    state: UpdateState


@dataclass(frozen=True)
class RequestChunk:
    """Publish ``update/get`` for one chunk."""

    release_id: str
    file_sha256: str
    index: int


@dataclass(frozen=True)
class WriteChunk:
    """Write a checked chunk into ``files/<sha>.part`` at ``offset``, fsync, then add ``index`` to its
    ``.have`` list (fsynced), so a restart resumes after it."""

    file_sha256: str
    index: int
    offset: int
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class CheckFile:
    """Every chunk of a file is written: hash ``.part`` whole; when it is the signed SHA-256 rename it to
    ``files/<sha>``. The answer is :class:`FileChecked`."""

    file_sha256: str
    size: int


@dataclass(frozen=True)
class Discard:
    """Remove the partial files (``.part`` and ``.have``) of these shas: superseded or corrupt."""

    shas: tuple[str, ...]


@dataclass(frozen=True)
class Stage:
    """Make ``staged/<release_id>/`` (release.json, release.sig, the files) and write ``request.json``
    for the root side. The answer is :class:`StageDone`."""

    release: Release = field(repr=False)
    signature: bytes = field(repr=False)
    allow_downgrade: bool
    rollout: str
    offer: bytes = field(repr=False, default=b"")  # the operator's envelope, staged as offer.env


@dataclass(frozen=True)
class Unstage:
    """An offer staged or on its way to be installed was withdrawn or superseded: remove its request."""

    release_id: str


@dataclass(frozen=True)
class RequestSwitch:
    """The release is prepared and the line idle: write ``switch.json`` and stop the service."""

    version: str
    release_id: str


Action = SaveOffer | Report | RequestChunk | WriteChunk | CheckFile | Discard | Stage | Unstage | RequestSwitch
