"""``make demo-scale``: the central store past one machine, on one machine.

Starts a throwaway PostgreSQL (:class:`~linetap.sync.central.localpg.LocalPostgres`),
a SeaweedFS S3 server (:class:`~linetap.sync.central.locals3.LocalSeaweed`) with
a bucket made with object lock, and Mosquitto
(:class:`~linetap.sync.broker.LocalBroker`), all on loopback; two
``linetap-central serve`` processes, each with its own data dir (no disk in
common: they share only the index, the bucket and the broker's ``$share``
group); the box of ``make demo`` running the demo's three calls and uploading
them; then ``linetap-central verify --all`` from the other host's folder.
Prints what it did and removes everything it made.

:class:`ScaleSite` (the hosts, their configs and their ``serve`` processes) is
also what the fault tests run (``tests/sync/central/test_scale_faults.py``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from linetap.firmware.durable import write_new_private
from linetap.firmware.errors import SyncError
from linetap.sync.broker import LocalBroker, end_process
from linetap.sync.central.config import load_config
from linetap.sync.central.indexes import open_index
from linetap.sync.central.keys import KEYS_DIR
from linetap.sync.central.keys import keys_init as central_keys_init

CREDENTIALS_FILE = "s3.credentials"  # in each host's keys/, mode 0600
STOP_S = 20.0
READY_POLL_S = 0.5  # how often a wait for READY looks whether serve ended instead


class ScaleSite:
    """``hosts`` ingest hosts under ``folder`` sharing one PostgreSQL index, one S3 bucket and one broker.

    Host 1's keys are made here and copied to the others (as a deployment
    copies them: every host signs receipts with the one store key). Each host
    gets ``central.toml`` naming the index, the bucket (credentials in a 0600
    file, never on a command line) and the broker, one worker per host.
    """

    def __init__(self, folder: Path, *, pg_url: str, s3_endpoint: str, s3_keys: tuple[str, str], bucket: str,
                 broker_port: int, hosts: int = 2, name: str = "scale", object_lock: str = "off") -> None:
        self.folder = Path(folder)
        self.hosts = [self.folder / f"host-{n}" for n in range(1, hosts + 1)]
        self._serves: dict[Path, subprocess.Popen[bytes]] = {}
        self.keys = central_keys_init(self.hosts[0])
        for n, host in enumerate(self.hosts, 1):
            if host != self.hosts[0]:
                host.mkdir(mode=0o700, parents=True)
                shutil.copytree(self.hosts[0] / KEYS_DIR, host / KEYS_DIR)
                (host / KEYS_DIR / CREDENTIALS_FILE).unlink(missing_ok=True)
            write_new_private(host / KEYS_DIR / CREDENTIALS_FILE,
                              f"[default]\naws_access_key_id = {s3_keys[0]}\n"
                              f"aws_secret_access_key = {s3_keys[1]}\n".encode())
            (host / "central.toml").write_text(
                f'[broker]\nhost = "127.0.0.1"\nport = {broker_port}\nworkers = 1\nclient_id = "{name}-{n}"\n'
                f'group = "{name}"\n'
                f'reconnect_max_s = 1\n\n[index]\nurl = "{pg_url}"\nconnect_timeout_s = 5\n\n'
                f'[store]\nurl = "s3://{bucket}/site"\nendpoint_url = "{s3_endpoint}"\n'
                f'credentials_file = "{KEYS_DIR}/{CREDENTIALS_FILE}"\nmax_attempts = 1\n'
                f'object_lock = "{object_lock}"\n\n'
                # A lock needs a date: calls kept 7 years (MiFID II), flagged ones 10.
                '[retention]\ndefault_days = 2555\nflagged_days = 3650\n')

    def config(self, host: Path) -> Path:
        return host / "central.toml"

    def cli(self, host: Path, *args: str) -> list[str]:
        """A ``linetap-central`` command line for ``host`` (its data dir; ``--config`` is the command's)."""
        return [sys.executable, "-m", "linetap.sync.central.cli", "--data-dir", str(host), *args]

    def enroll(self, device_id: str, public_key_b64: str) -> None:
        config = load_config(self.config(self.hosts[0]), self.hosts[0])
        with open_index(config.index, self.hosts[0]) as index:
            index.enroll(device_id, public_key_b64, 0)

    def start(self, host: Path, timeout: float = 60.0) -> subprocess.Popen[bytes]:
        """``serve`` on ``host`` (its log in ``host/serve.log``), once it says it is ingesting: ``READY=1``
        on its notify socket, as systemd's ``Type=notify`` waits for (every worker subscribed)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify, open(host / "serve.log", "ab") as log:
            name = f"linetap-scale-{uuid.uuid4().hex}"
            notify.bind("\0" + name)
            proc = subprocess.Popen(self.cli(host, "serve", "--config", str(self.config(host))),
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    env=os.environ | {"NOTIFY_SOCKET": "@" + name})
            self._serves[host] = proc
            deadline = time.monotonic() + timeout
            while proc.poll() is None and time.monotonic() < deadline:
                notify.settimeout(min(READY_POLL_S, max(0.01, deadline - time.monotonic())))
                try:
                    if notify.recv(4096).startswith(b"READY=1"):
                        return proc
                except TimeoutError:
                    continue
        raise SyncError(f"serve on {host} did not get ready within {timeout:g} s (exit {proc.poll()}):\n"
                        + "\n".join((host / "serve.log").read_text(errors="replace").splitlines()[-15:]))

    def kill(self, host: Path) -> None:
        """SIGKILL ``host``'s serve (and its worker process): a host lost mid-ingest."""
        proc = self._serves.pop(host)
        for child in _children(proc.pid):
            os.kill(child, signal.SIGKILL)
        proc.kill()
        proc.wait(STOP_S)

    def wipe(self, host: Path) -> None:
        """Everything of ``host``'s folder but its keys, config and log: a host rebuilt on a new disk."""
        keep = {KEYS_DIR, "central.toml", "serve.log"}
        for path in host.iterdir():
            if path.name not in keep:
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()

    def stop(self) -> dict[Path, int]:
        """SIGTERM every serve; their exit statuses."""
        codes = {}
        for host, proc in list(self._serves.items()):
            end_process(proc, signal.SIGTERM, STOP_S)
            codes[host] = proc.returncode
        self._serves.clear()
        return codes

    def verify(self, host: Path) -> subprocess.CompletedProcess[str]:
        """``linetap-central verify --all`` from ``host``'s folder."""
        return subprocess.run(self.cli(host, "verify", "--all", "--config", str(self.config(host))),
                              capture_output=True, text=True, timeout=120, check=False)


def _children(pid: int) -> list[int]:
    """The child processes of ``pid`` (serve's worker processes), from /proc."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(p) for p in task.read_text().split()]
        except (OSError, ValueError):
            continue
    return found


def run(folder: Path) -> int:
    """The demo, in ``folder`` (made fresh here); 0 when every call is stored and verifies."""
    from linetap.firmware.config import Config
    from linetap.firmware.demo import _run_calls, _three_calls
    from linetap.firmware.keys import keys_init
    from linetap.sync.central.localpg import LocalPostgres
    from linetap.sync.central.locals3 import LocalSeaweed

    with LocalPostgres(folder / "postgres") as pg, LocalSeaweed(folder / "s3") as s3, \
            LocalBroker(folder / "broker", persistence=False) as broker:
        bucket = s3.create_bucket("linetap-demo")
        print(f"linetap demo-scale, in {folder}:\n  PostgreSQL  {pg.url} (throwaway cluster)\n"
              f"  S3          {s3.endpoint} bucket {bucket!r} (SeaweedFS); each recording's objects are "
              "locked (governance mode) as it completes\n"
              f"  broker      Mosquitto on 127.0.0.1:{broker.port}")
        site = ScaleSite(folder / "central", pg_url=pg.url, s3_endpoint=s3.endpoint,
                         s3_keys=(s3.access_key, s3.secret_key), bucket=bucket, broker_port=broker.port,
                         object_lock="governance")
        config, near, far, script = _three_calls(Config())
        box = folder / "box"
        info = keys_init(box, site.keys.recipient, operator_key=site.keys.operator_public_key_b64,
                         store_key=site.keys.store_public_key_b64)
        site.enroll(config.device.id, info.public_key_b64)
        for host in site.hosts:
            site.start(host)
            print(f"  serve       {host} (its own folder; index, bucket and $share group shared)")
        config = config.model_copy(update={"sync": config.sync.model_copy(
            update={"broker": "127.0.0.1", "port": broker.port, "tls": False})})
        try:
            recordings, synced, upload = _run_calls(config, box, near, far, script, realtime=False)
        finally:
            codes = site.stop()
        return _report(site, s3, bucket, codes, synced and len(recordings) == 3, upload)


def _report(site: ScaleSite, s3: Any, bucket: str, codes: dict[Path, int], synced: bool, upload: Any) -> int:
    """What the hosts left, ``verify --all`` and the bucket; 0 when all is well."""
    print(f"\nthe demo's calls {'all' if synced else 'NOT all'} acknowledged by the central store"
          f"{'' if synced else f': {upload}'}")
    for host, code in codes.items():
        staged = sum(1 for _ in (host / "staging").rglob("*")) if (host / "staging").exists() else 0
        print(f"  serve on {host.name} stopped (exit {code}); staging files left in its folder: {staged}")
    done = site.verify(site.hosts[-1])
    print(f"\nlinetap-central --data-dir {site.hosts[-1]} verify --all:\n{done.stdout.rstrip()}{done.stderr.rstrip()}")
    client = s3.client()
    keys = [o["Key"] for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket)
            for o in page.get("Versions", [])]
    print(f"\nbucket {bucket!r}: {len(keys)} object versions, {len(set(keys))} keys (each object once)")
    for key in keys[:1]:
        head = client.head_object(Bucket=bucket, Key=key)
        print(f"  {key}: object lock {head.get('ObjectLockMode', 'none')} until "
              f"{head.get('ObjectLockRetainUntilDate', '-')}")
    return 0 if synced and done.returncode == 0 and codes and not any(codes.values()) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m linetap.sync.central.demo_scale", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("--keep", type=Path, metavar="FOLDER",
                        help="work in FOLDER (must not exist) and keep it afterwards, instead of a temporary one")
    args = parser.parse_args(argv)
    if args.keep is not None:
        args.keep.mkdir(parents=True)
        return run(args.keep.resolve())
    folder = Path(tempfile.mkdtemp(prefix="linetap-demo-scale-"))
    try:
        return run(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        print(f"\nremoved {folder} (PostgreSQL, SeaweedFS, broker, both hosts' folders, the box)")


if __name__ == "__main__":
    raise SystemExit(main())
