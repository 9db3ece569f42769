"""A real RFC 3161 time-stamping authority on loopback: Debian's ``openssl ts -reply`` behind http.server.

:func:`make_tsa_files` makes a test CA and a TSA certificate (EC P-256,
``extendedKeyUsage = critical,timeStamping``) with the ``openssl`` command;
:class:`LocalTsa` answers each POSTed query by running ``openssl ts -reply``.
Its ``mode`` makes it misbehave on purpose: ``"garbage"`` answers bytes that
are no timestamp reply, ``"error"`` answers HTTP 500, ``"huge"`` 100 KiB. :func:`closed_url` is a
loopback URL where nothing listens (a TSA that is down).
"""

from __future__ import annotations

import socket
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

# No `certs =` line: OpenSSL's extra certificates in the token do not parse in rfc3161-client.
TSA_CONFIG = """\
[ tsa ]
default_tsa = tsa_config1

[ tsa_config1 ]
dir = {dir}
serial = $dir/tsaserial
crypto_device = builtin
signer_cert = $dir/tsa.pem
signer_key = $dir/tsa.key
signer_digest = sha256
default_policy = 1.2.3.4.1
digests = sha256, sha384, sha512
accuracy = secs:1
ordering = yes
tsa_name = yes
ess_cert_id_chain = no
ess_cert_id_alg = sha256
"""

TSA_EXTENSIONS = """\
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,nonRepudiation
extendedKeyUsage = critical,timeStamping
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_tsa_files(folder: Path, *, name: str = "Test") -> Path:
    """``ca.pem``, ``tsa.pem``/``tsa.key`` and ``tsa.cnf`` in ``folder``; returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key", cwd=folder)
    _openssl("req", "-new", "-x509", "-key", "ca.key", "-out", "ca.pem", "-days", "3650", "-subj",
             f"/CN=linetap {name} TSA root", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "tsa.key", cwd=folder)
    _openssl("req", "-new", "-key", "tsa.key", "-out", "tsa.csr", "-subj", f"/CN=linetap {name} TSA", cwd=folder)
    (folder / "tsa.ext").write_text(TSA_EXTENSIONS)
    _openssl("x509", "-req", "-in", "tsa.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "tsa.pem", "-days", "3650", "-extfile", "tsa.ext", cwd=folder)
    (folder / "tsaserial").write_text("01\n")
    (folder / "tsa.cnf").write_text(TSA_CONFIG.format(dir=folder))
    return folder


class LocalTsa:
    """``openssl ts -reply`` at ``url`` (loopback, a free port), one query at a time."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.mode = "ok"
        self.answered = 0
        self._lock = threading.Lock()
        tsa = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                size = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(min(size, 64 * 1024))
                status, answer = tsa.answer(body)
                self.send_response(status)
                self.send_header("Content-Type", "application/timestamp-reply")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/tsr"
        self._thread = threading.Thread(target=self._server.serve_forever, name="local-tsa", daemon=True)

    def answer(self, query: bytes) -> tuple[int, bytes]:
        with self._lock:
            self.answered += 1
            if self.mode == "garbage":
                return 200, b"\x30\x03this is no timestamp reply"
            if self.mode == "error":
                return 500, b"internal error"
            if self.mode == "huge":
                return 200, b"\x30" * (100 * 1024)
            n = self.answered
            (self.folder / f"q{n}.tsq").write_bytes(query)
            _openssl("ts", "-reply", "-config", "tsa.cnf", "-queryfile", f"q{n}.tsq", "-out", f"r{n}.tsr",
                     cwd=self.folder)
            return 200, (self.folder / f"r{n}.tsr").read_bytes()

    def start(self) -> LocalTsa:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


def closed_url() -> str:
    """A loopback URL where nothing listens: a TSA that is down."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/tsr"


def timestamps_config(url: str) -> str:
    """The ``[timestamps]`` section of a store whose TSA certificates :func:`stamping_store` copied in."""
    return f'[timestamps]\ntsa_url = "{url}"\nca_file = "tsa/ca.pem"\ntsa_cert_file = "tsa/tsa.pem"\n'


def stamping_store(central: Path, tsa_files: Path, url: str) -> Path:
    """A new central store (keys made) that trusts the test TSA and stamps with the one at ``url``."""
    from linetap.sync.central.keys import keys_init

    keys_init(central)
    (central / "tsa").mkdir()
    for name in ("ca.pem", "tsa.pem"):
        (central / "tsa" / name).write_bytes((tsa_files / name).read_bytes())
    (central / "central.toml").write_text(timestamps_config(url))
    return central


def ingest_stamped(central: Path, box: object, rids: list[str], stamp_after: int) -> None:
    """Ingest the box's recordings ``rids`` in order, with ``linetap-central timestamp`` after the one at
    index ``stamp_after`` (so a stamp covers those and later ones are not yet stamped)."""
    from linetap.firmware.clock import ManualClock
    from linetap.sync.central.cli import main
    from linetap.sync.central.ingest import Ingest

    with Ingest(central, clock=ManualClock()) as core:
        for i, rid in enumerate(rids):
            for part in box.parts(rid):  # type: ignore[attr-defined]
                core.receive(part)
            if i == stamp_after:
                assert main(["--data-dir", str(central), "timestamp"]) == 0
