"""The self-test a new version must pass before it is kept: drivers, pipeline, spool, broker.

After an update switched versions, root's gate keeps a trial
(``<app>/trial.json``, :mod:`linetap.sync.appslots`). The service, once
READY, runs :func:`run_checks` (:func:`start_trial_check`, on a thread of its
own so recording is not held up) and writes ``healthy.json`` or, naming the
check that failed, ``unhealthy.json`` (code ``selftest-failed``) and then
stops the service with a failure, so root rolls back. ``linetap selftest``
runs the same checks for an installer (``--json`` for a machine).

Checks, in order:

- ``drivers``: the board profile's drivers are open (the command builds and
  closes them; the service has them);
- ``pipeline``: a second of test tone through the recorder's detectors and
  masking and the Opus encoder, decoded back in memory, comes out as long
  and as loud as it went in (within :data:`LEVEL_TOLERANCE_DB`); nothing
  touches the spool;
- ``spool``: a probe file in the spool folder is created, written, fsynced
  and removed;
- ``broker``: the fleet link is connected within the deadline (a box
  configured without a broker has none to reach: said, and passed).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from linetap.firmware.clock import Clock
from linetap.firmware.config import Config
from linetap.firmware.dsp.levels import rms_dbfs
from linetap.firmware.encoder import OpusSegmenter, segments_to_pcm
from linetap.firmware.errors import LinetapError
from linetap.firmware.recorder import MemorySink, Recorder
from linetap.firmware.spool.layout import SPOOL_DIR

logger = logging.getLogger(__name__)

BROKER_DEADLINE_S = 60.0
LEVEL_TOLERANCE_DB = 6.0
PROBE = ".selftest-probe"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def check_pipeline(config: Config) -> str:
    """One second of tone through detectors, masking and encoder, decoded in memory; raises on a fault."""
    rate = config.audio.rate
    t = np.arange(rate) / rate
    tone = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
    block = np.stack([tone, tone // 2], axis=1)
    Recorder(rate, MemorySink()).feed(block)
    with OpusSegmenter(rate, bitrate=config.spool.bitrate, segment_s=config.spool.segment_s) as encoder:
        segments = encoder.write(block)
        segments.append(encoder.finish())
    pcm = segments_to_pcm([s for s in segments if s], rate)
    got, want = float(rms_dbfs(pcm[:, 0])), float(rms_dbfs(tone))
    if len(pcm) < rate * 0.9 or abs(got - want) > LEVEL_TOLERANCE_DB:
        raise LinetapError(f"test tone came out of the pipeline as {len(pcm)} frames at {got:.1f} dBFS; "
                           f"{rate} frames at {want:.1f} dBFS went in")
    return f"{len(pcm)} frames at {got:.1f} dBFS back from the encoder ({want:.1f} in)"


def check_spool(data_dir: Path) -> str:
    """Create, write, fsync and remove a probe file in the spool folder."""
    folder = Path(data_dir) / SPOOL_DIR
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / PROBE
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, b"linetap self-test\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    probe.unlink()
    return f"{folder} writable"


def run_checks(config: Config, data_dir: Path, *, drivers: Callable[[], str],
               broker: Callable[[float], bool] | None, deadline_s: float = BROKER_DEADLINE_S) -> list[Check]:
    """Every check, each named with what it found; a failing one does not stop those after it."""
    results = []
    steps: list[tuple[str, Callable[[], str]]] = [
        ("drivers", drivers), ("pipeline", lambda: check_pipeline(config)), ("spool", lambda: check_spool(data_dir)),
        ("broker", lambda: _check_broker(config, broker, deadline_s))]
    for name, step in steps:
        try:
            results.append(Check(name, True, step()))
        except (LinetapError, OSError, ValueError) as e:
            detail = f"{e.strerror}: {e.filename}" if isinstance(e, OSError) and e.strerror else str(e)
            results.append(Check(name, False, detail))
        except Exception as e:  # a check that crashes fails, named: the trial must get a verdict, never none
            results.append(Check(name, False, f"{type(e).__name__}: {e}"))
    return results


def _check_broker(config: Config, broker: Callable[[float], bool] | None, deadline_s: float) -> str:
    if not config.sync.broker:
        return "no broker to reach (sync.broker is empty): not checked"
    if broker is None:
        raise LinetapError(f"sync.broker is {config.sync.broker} but the fleet link did not start")
    if not broker(deadline_s):
        raise LinetapError(f"not connected to {config.sync.broker}:{config.sync.port} within {deadline_s:.0f} s")
    return f"connected to {config.sync.broker}:{config.sync.port}"


def failure(checks: list[Check]) -> str | None:
    """The reason a list of checks failed (the first failing check, named), or None."""
    bad = [c for c in checks if not c.ok]
    return None if not bad else "; ".join(f"{c.name}: {c.detail}" for c in bad)


def print_checks(checks: list[Check], *, as_json: bool) -> int:
    if as_json:
        print(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        for c in checks:
            print(f"{'ok  ' if c.ok else 'FAIL'} {c.name:<9} {c.detail}")
    return 0 if all(c.ok for c in checks) else 1


def start_trial_check(config: Config, data_dir: Path, app_root: Path, version: str, *,
                      drivers: Callable[[], str], broker: Callable[[float], bool] | None,
                      on_failed: Callable[[str], None], clock: Clock) -> threading.Thread | None:
    """When ``version`` is on trial, check it on a thread and write healthy.json or unhealthy.json.

    ``on_failed(reason)`` is called after unhealthy.json is written (the
    service stops with a failure). None when no trial of ``version`` is in
    progress.
    """
    from linetap.sync import appslots

    try:
        trial = appslots.read_trial(app_root)
    except appslots.SlotFileError as e:
        logger.error("trial file unreadable, no self-test reason=%s", e)
        return None
    if trial is None or trial.version != version:
        return None
    deadline_s = max(1.0, min(BROKER_DEADLINE_S, trial.deadline_ms / 1000 - clock.wall()))

    def check() -> None:
        checks = run_checks(config, data_dir, drivers=drivers, broker=broker, deadline_s=deadline_s)
        reason = failure(checks)
        health = appslots.Health(version, healthy=reason is None, code=None if reason is None else
                                 "selftest-failed", reason=reason or "")
        try:
            appslots.write_health(data_dir, health)
        except (OSError, LinetapError) as e:
            reason = f"{reason or 'self-test passed'}; and health file not written: {e}"
        if reason is None:
            logger.info("self-test passed version=%s: healthy", version)
        else:
            logger.error("self-test failed version=%s reason=%s", version, reason)
            on_failed(reason)

    thread = threading.Thread(target=check, name="update-selftest", daemon=True)
    thread.start()
    return thread


def main(config: Config, data_dir: Path, clock: Clock, *, as_json: bool, broker_timeout_s: float) -> int:
    """``linetap selftest``: the drivers built and closed, the checks, the link opened for the broker check."""
    from linetap.firmware.devices import build_board

    board = None

    def drivers() -> str:
        nonlocal board
        board = build_board(config, clock, lambda _event: None)
        return f"board {config.device.board}: {type(board.codec).__name__} open"

    try:
        checks = run_checks(config, data_dir, drivers=drivers, broker=_link_check(config, data_dir, clock),
                            deadline_s=broker_timeout_s)
    finally:
        if board is not None:
            board.close()
    return print_checks(checks, as_json=as_json)


def _link_check(config: Config, data_dir: Path, clock: Clock) -> Callable[[float], bool] | None:
    if not config.sync.broker:
        return None

    def connected(deadline_s: float) -> bool:
        from linetap.sync.link import Link

        up = threading.Event()
        with Link(config.sync, client_id=config.device.id, data_dir=data_dir, clock=clock,
                  on_connected=up.set):
            return up.wait(deadline_s)

    return connected
