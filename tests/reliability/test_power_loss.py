"""Power loss, for real: SIGKILL a recording process at random points, restart it, check the spool.

Seeded and time-bounded. A harness process (``spool_harness.py``) records
calls through the real Spool and SpoolSink and prints each step once it is
durable; the test kills it after a random number of steps, over and over.
Afterwards every segment decrypts with the central key (once with the
``age`` command), every manifest verifies, the chain has no gaps, no seq
repeats, and every segment the harness reported as stored is still listed:
a kill lost at most the segment in progress.
"""

from __future__ import annotations

import json
import os
import random
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyrage
import pytest

from linetap.firmware import manifest as mf
from linetap.firmware.keys import keys_init
from linetap.firmware.encoder import segments_to_pcm
from linetap.firmware.spool import BENIGN_FINDINGS, list_recordings, verify_spool

HARNESS = Path(__file__).with_name("spool_harness.py")
KILLS = 55
SEED = 20260101
BUDGET_S = 80.0


class Harness:
    """One harness process and its progress lines, read with timeouts (never slept on)."""

    def __init__(self, data: Path, seed: int, *extra: str) -> None:
        self.proc = subprocess.Popen([sys.executable, str(HARNESS), str(data), str(seed), *extra],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.proc.stdout, selectors.EVENT_READ)
        self._buffer = b""

    def next_line(self, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not self._selector.select(left):
                raise AssertionError(f"harness said nothing for {timeout} s; stderr: {self.stderr()}")
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                raise AssertionError(f"harness exited with {self.proc.wait()}: {self.stderr()}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        return self.proc.stderr.read().decode(errors="replace")[-2000:]

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._selector.close()
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_sigkill_at_random_points_loses_at_most_the_segment_in_progress(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    central = pyrage.x25519.Identity.generate()
    data = tmp_path / "data"
    keys_init(data, str(central.to_public()))
    stored: dict[str, set[int]] = {}  # segments reported durable, per recording
    opened: dict[str, int] = {}
    started = time.monotonic()
    for kill in range(KILLS):
        assert time.monotonic() - started < BUDGET_S, f"only {kill} kills within {BUDGET_S} s"
        harness = Harness(data, rng.randrange(2 ** 31))
        ready = harness.next_line()
        assert ready.startswith("ready "), ready
        unexpected = [f for f in json.loads(ready[6:])
                      if f["kind"] not in BENIGN_FINDINGS]
        assert not unexpected, f"after kill {kill}: {unexpected}"
        for _ in range(rng.randint(0, 14)):
            kind, rid, number = harness.next_line().split()
            if kind == "open":
                opened[rid] = int(number)
            elif kind == "seg":
                stored.setdefault(rid, set()).add(int(number))
        harness.kill()

    final = Harness(data, 0, "--recover-only")
    ready = final.next_line()
    assert final.proc.wait(timeout=15) == 0
    final.kill()
    assert all(f["moved_to"] is None for f in json.loads(ready[6:]))

    rows = list_recordings(data)
    seqs = [r["seq"] for r in rows]
    assert seqs == list(range(1, len(rows) + 1)), "sequence numbers repeat or leave a gap"
    assert {r["state"] for r in rows} == {"closed"}
    assert len(rows) >= 10 and sum(len(s) for s in stored.values()) >= 50
    assert {r["id"]: r["seq"] for r in rows if r["id"] in opened} == opened, \
        "a recording's seq changed across a restart"
    report = verify_spool(data)
    assert report["ok"], report

    ended_by_power_loss = 0
    cut_short: bytes | None = None
    for row in rows:
        folder = data / "spool" / row["id"]
        manifest = mf.verify((folder / "manifest.json").read_bytes())
        listed = {s["index"] for s in manifest["segments"]}
        lost = stored.get(row["id"], set()) - listed
        assert not lost, f"recording seq={row['seq']} lost stored segments {sorted(lost)}"
        assert listed == set(range(len(listed))), f"seq={row['seq']} has holes: {sorted(listed)}"
        ended_by_power_loss += manifest["ended_by"] == "power-loss"
        plain = [pyrage.decrypt((folder / f"{s['index']:06d}.age").read_bytes(), [central])
                 for s in manifest["segments"]]
        assert all(p.startswith(b"OggS") for p in plain)
        if plain:  # what survived is one decodable Ogg Opus stream, a power cut's included
            audio = segments_to_pcm(plain, 8000)
            assert audio.shape[1] == 2 and len(audio) >= 0.45 * 8000 * len(plain)
            assert np.abs(audio[:, 0]).max() > 1000 and np.abs(audio[:, 1]).max() > 1000
            if manifest["ended_by"] == "power-loss":
                cut_short = b"".join(plain)
    assert ended_by_power_loss >= KILLS // 2
    assert cut_short is not None, "no recording closed by power loss kept a segment"
    decoded = subprocess.run(["opusdec", "--quiet", "-", str(tmp_path / "cut.wav")], input=cut_short,
                             capture_output=True, timeout=30)
    assert decoded.returncode == 0, decoded.stderr

    identity = tmp_path / "central.key"
    identity.write_text(str(central) + "\n")
    some = next(data.glob("spool/*/000000.age"))
    out = subprocess.run(["age", "-d", "-i", str(identity), str(some)], capture_output=True,
                         check=True, timeout=10).stdout
    assert out.startswith(b"OggS")
