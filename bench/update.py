"""The remote update's cost to the box, every part a real process, against a plain restart.

The site of the end-to-end tests (``tests/update_site.py``): a Mosquitto,
``linetap-central serve`` (tracker and chunk server), and a box, ``linetap
run`` under the supervisor that plays systemd (gate, launcher, restarts, the
path unit running root's ``linetap update step``). The operator uses the
command line (``release build``, ``fleet update push``).

Three releases of this working tree, one after the other:

1. ``full``: the first update; the box has none of the wheels, so it fetches
   the whole release (linetap and every dependency);
2. ``code_only``: the next version; the box keeps the wheels of the version it
   runs, so only linetap's own wheel travels;
3. ``during_call``: pushed while the simulated handset is off hook; the box
   must wait for the hang-up: every process start seen while the call is up
   is a switch during a call (must be 0).

Figures for each: chunk bytes sent to the box on ``update/chunk`` (a watcher
on the broker counts them) against the release's size; CPU seconds of the box
process from the push until the fetch is done (``preparing``), next to what
the same process burns idle over as long (it runs the call loop on silence
meanwhile); wall and CPU seconds of root's step (pip builds the version's
venv); seconds from ``fleet update push`` to the new version's READY; and the
time recording is unavailable during the switch: from the box's ``switching``
state to the new process's READY (target: under 3 s). Peer, in the same run
on the same box: a plain restart of the running version, from SIGTERM to
READY. No figure is asserted.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from linetap.sync.broker import LocalBroker

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import update_helpers as uh  # noqa: E402  (the tests' site, so the figures are of what the tests run)
from update_site import Site, cpu_seconds  # noqa: E402

DEVICE = "lt-bench-update"
RESTARTS = 3
TARGET_SWITCH_S = 3.0


def _update(site: Site, version: str) -> dict[str, Any]:
    """Release ``version``, push it, and time it to READY and to ``installed``."""
    built = site.build_release(version)
    events, states, sent = len(site.box.events), len(site.watcher.states), site.watcher.chunk_bytes
    pid = site.box.pid
    cpu, pushed = cpu_seconds(pid), time.monotonic()
    site.push(version)
    fetched, _ = site.watcher.wait_state(lambda s: s["state"] == "preparing" and s["version"] == version,
                                         after=states)
    fetch_cpu = cpu_seconds(pid) - cpu
    step = site.box.wait_for(lambda e: e[0] == "step" and "prepared" in e[1], after=events, timeout=600)
    switching, _ = site.watcher.wait_state(lambda s: s["state"] == "switching", after=states, timeout=600)
    ready = site.box.wait_for(lambda e: e[:2] == ("ready", version), after=events)
    site.watcher.wait_state(lambda s: s.get("outcome") == "installed" and s["version"] == version, after=states)
    return {"version": version, "release_bytes": built["size"], "chunk_bytes_to_box": site.watcher.chunk_bytes - sent,
            "fetch_s": round(fetched - pushed, 2), "fetch_cpu_s": round(fetch_cpu, 2),
            "box_idle_cpu_s_same_time": round(_idle_cpu(site, fetched - pushed), 2),
            "step_s": round(step[2], 2), "step_cpu_s": round(step[3], 2),
            "push_to_ready_s": round(ready[2] - pushed, 2), "switch_unavailable_s": round(ready[2] - switching, 3),
            "switch_phases": _phases(site, events, switching, ready)}


def _phases(site: Site, events: int, stopped: float, ready: tuple) -> dict[str, float]:
    """Where the unavailable time went: the old process ending, root's gate, the new one's start to READY."""
    seen = site.box.events[events:site.box.events.index(ready)]
    exited = [e for e in seen if e[0] == "exited"][-1]
    gate = [e for e in seen if e[0] == "gate"][-1]
    started = [e for e in seen if e[0] == "started"][-1]
    return {"old_exit_s": round(exited[4] - stopped, 3), "gate_s": round(gate[2], 3),
            "start_to_ready_s": round(ready[2] - started[3], 3)}


def _idle_cpu(site: Site, seconds: float) -> float:
    """CPU seconds the box process takes idle over ``seconds`` (its call loop on silence, its link)."""
    pid = site.box.pid
    before = cpu_seconds(pid)
    threading.Event().wait(min(seconds, 10.0))  # a measuring window, not a wait for an event
    return (cpu_seconds(pid) - before) * seconds / min(seconds, 10.0)


def _restart(site: Site, version: str) -> tuple[float, dict[str, float]]:
    """The peer: a plain restart of the running version, SIGTERM to READY, and its phases."""
    events = len(site.box.events)
    began = time.monotonic()
    site.box.restart()
    ready = site.box.wait_for(lambda e: e[:2] == ("ready", version), after=events)
    return ready[2] - began, _phases(site, events, began, ready)


def _during_call(site: Site, version: str) -> dict[str, Any]:
    """Push while the handset is off hook; count the starts while the call is up; hang up; time to READY."""
    site.build_release(version)
    site.handset(off_hook=True)
    events, states = len(site.box.events), len(site.watcher.states)
    site.push(version)
    site.watcher.wait_state(lambda s: s["state"] == "waiting-idle" and s["version"] == version, after=states)
    switches = sum(1 for e in site.box.events[events:] if e[0] == "started")
    hung_up = time.monotonic()
    site.handset(off_hook=False)
    ready = site.box.wait_for(lambda e: e[:2] == ("ready", version), after=events)
    return {"version": version, "switches_during_call": switches,
            "hang_up_to_ready_s": round(ready[2] - hung_up, 2)}


def run() -> dict:
    with tempfile.TemporaryDirectory(prefix="linetap-bench-update-") as temp:
        work = Path(temp)
        kit = uh.Kit(work / "kit")
        first = uh.next_version(kit.factory)
        second = uh.next_version(first)
        with LocalBroker(work / "broker", persistence=False) as broker, \
                Site(work / "site", broker, kit, DEVICE) as site:
            full = _update(site, first)
            code_only = _update(site, second)
            restarts = [_restart(site, second) for _ in range(RESTARTS)]
            during = _during_call(site, uh.next_version(second))
    restart = statistics.median(r for r, _ in restarts)
    return {"full": full, "code_only": code_only, "during_call": during,
            "code_only_bytes_over_full_release": round(code_only["chunk_bytes_to_box"] / full["release_bytes"], 4),
            "peer_restart_unavailable_s": round(restart, 3), "peer_restarts": [round(r, 3) for r, _ in restarts],
            "peer_restart_phases": [p for _, p in restarts],
            "switch_over_restart": round(code_only["switch_unavailable_s"] / restart, 2),
            "switch_target_s": TARGET_SWITCH_S,
            "switch_under_target": code_only["switch_unavailable_s"] < TARGET_SWITCH_S,
            "cpus": os.cpu_count()}
