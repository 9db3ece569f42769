"""Figures of root's half of an update, for ``bench/``: :func:`measure` builds a real release and times it.

* ``prepare_s``: ``linetap update step`` preparing the release (re-hash, copy, venv, pip, import check);
* ``pip_factory_s``: the venv and install alone as the step makes them (``venv --without-pip``, the
  factory's pip with ``--python``), against ``pip_ensurepip_s``, the way not taken (``python -m venv``
  with ensurepip, then the new venv's own pip);
* ``switch_to_ready_s``: from the old version's exit to the new one's READY (the gate switching, the
  launch, start-up), against ``restart_to_ready_s``, the same restart with nothing to switch;
* ``gate_s``: the gate alone when it has nothing to do (it runs before every start).

Each is the median of ``rounds``; the times are on this machine and say nothing of a Pi's.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyrage
import update_helpers as uh
from update_supervisor import FACTORY_BIN, Supervisor

from linetap.sync import appslots
from linetap.sync.appslots import Named, Request


def measure(rounds: int = 3, workdir: Path | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="linetap-update-figures-", dir=workdir) as tmp:
        root = Path(tmp)
        kit = uh.Kit(root / "kit")
        rel = kit.full()
        figures: dict = {"release_files": len(rel.files), "release_mib": round(rel.parsed.size / 2**20, 1)}
        for name, own in (("pip_factory_s", False), ("pip_ensurepip_s", True)):
            figures[name] = _median([_pip(root / f"{name}{n}", rel, own_pip=own) for n in range(rounds)])
        runs = [_switch(root / f"s{n}", kit, rel) for n in range(rounds)]
        for name in runs[0]:
            figures[name] = _median([run[name] for run in runs])
        return figures


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 2)


def _pip(folder: Path, rel: uh.Release, *, own_pip: bool) -> float:
    wheels = folder.with_name(folder.name + "-wheels")
    wheels.mkdir()
    for path in rel.files.values():  # pip reads a wheel's tags from its name, as the step's copies are named
        (wheels / path.name).symlink_to(path)
    began = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", *([] if own_pip else ["--without-pip"]), str(folder)],
                   check=True, capture_output=True)
    pip = [str(folder / "bin" / "python"), "-m", "pip"] if own_pip else [
        sys.executable, "-m", "pip", "--python", str(folder / "bin" / "python")]
    subprocess.run([*pip, "install", "-q", "--no-index", "--no-deps", "--no-cache-dir",
                    "--disable-pip-version-check", *map(str, sorted(wheels.iterdir()))],
                   check=True, capture_output=True)
    return time.monotonic() - began


def _switch(folder: Path, kit: uh.Kit, rel: uh.Release) -> dict:
    app, data = folder / "app", folder / "data"
    uh.trust(app, kit.key)
    uh.keys_init(data, str(pyrage.x25519.Identity.generate().to_public()))
    began = time.monotonic()
    subprocess.run([str(FACTORY_BIN / "linetap"), "update", "gate", "--app-root", str(app), "--data-dir",
                    str(data)], check=True, capture_output=True)
    gate_s = time.monotonic() - began
    sup = Supervisor(app, data, ["run"]).start()
    try:
        exited = sup.wait_for(lambda e: e[:2] == ("exited", "factory"))  # `run` on the simulated board ends
        ready = sup.wait_for(lambda e: e[:2] == ("ready", "factory"), after=sup.events.index(exited))
        restart_s = ready[2] - exited[4]
        uh.stage(data, rel)
        appslots.write_request(data, Request(rel.release_id, rel.version, allow_downgrade=False, at_ms=1))
        prepared = sup.wait_for(lambda e: e[0] == "step" and "prepared" in e[1], timeout=600)
        appslots.write_switch(data, Named(rel.release_id, rel.version))
        mark = len(sup.events)
        exited = sup.wait_for(lambda e: e[:2] == ("exited", "factory"), after=mark)
        ready = sup.wait_for(lambda e: e[:2] == ("ready", rel.version), after=sup.events.index(exited))
    finally:
        sup.stop()
    return {"prepare_s": prepared[2], "switch_to_ready_s": ready[2] - exited[4], "restart_to_ready_s": restart_s,
            "gate_s": gate_s}
