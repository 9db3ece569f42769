"""QA console: search over 100,000 calls, a seek into minute 45 of an hour, 50 listeners at once.

A one-hour call (16 kHz stereo tones, 24 kbit/s Opus in 10 s segments) is
recorded by the box's own spool and imported into a fresh central store,
its peaks made as ``serve`` makes them, and 100,000 more recordings are
written into the index (``bench/indexlist.py``'s rows). The console app
(``make_app``) runs under uvicorn in a process of its own, with one more
route, unguarded, that serves the same call already decrypted as a static
file (Starlette's ``FileResponse``, Range included, behind the same
session and role check): the peer, on the same server, that does no
decrypting, no scope query and no access log entry. An admin logs in over HTTP; then:

- search: ``GET /calls`` with every kind of search the page offers
  (``bench/consolesearch.py``'s ``QUERIES``: filters, sort orders, a deep
  page), each repeated; p50/p95 of the request time on loopback (the
  server's time plus a loopback round trip). The rows carry QA metrics as a
  box sends them (decimal strings), turned into the index's figure columns
  by the schema step that fills an older index (``fill_figures``, timed).
  Callers: a selective substring (the trigram table leads), a broad one
  (``+1555``, 90 % of the calls), and two characters. The same queries'
  server time in the index alone, SQLite against PostgreSQL, is
  ``search_server_time`` (``bench/consolesearch.py``, in the same run);
- seek: ``Range: bytes=N-`` where N is where minute 45 starts, time to the
  first body byte, against the static file; ``cold`` is the first request
  after the server started (segment sizes not cached yet);
- listeners: 50 clients at once, each reading 4 MiB from its own point of the
  call (their ranges overlap, as listeners of one call do: the console's
  cache of decrypted segments serves the overlap), total bytes per second
  against the static file; and, for scale, the seconds one thread takes to
  check and decrypt the whole hour once without any cache.

Figures, never assertions: a slow machine still prints them.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import consolesearch, evidence
from linetap.sync.central.figuresindex import fill_figures

CALL_S = 3600
SEARCH_ROWS = consolesearch.SEARCH_ROWS
SEARCH_REPEATS = 20
SEEK_REPEATS = 20
LISTENERS = 50
LISTEN_BYTES = 4 << 20
PASSWORD = "bench-password-long-enough"
STATIC_PATH = "/bench/static.ogg"


def serve(data_dir: str, port: int, static_file: str) -> None:
    """The console on ``data_dir`` plus the static peer route, on 127.0.0.1:``port`` (run in a child)."""
    import uvicorn
    from starlette.responses import FileResponse
    from starlette.routing import Route

    from linetap.sync.central.config import load_config
    from linetap.sync.central.web.app import guarded, make_app
    from linetap.sync.central.web.settings import Settings

    async def static(_request: object) -> FileResponse:
        return FileResponse(static_file)

    folder = Path(data_dir)
    app = make_app(Settings(folder, load_config(None, folder)))
    # Behind the same session and role check as the console's audio: the peer differs only in what it sends.
    app.router.routes.insert(0, Route(STATIC_PATH, guarded("media_audio", static)))
    uvicorn.run(app, host="127.0.0.1", port=port, access_log=False, log_level="warning")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Client:
    """One HTTP/1.1 connection to the console with the admin's session cookie."""

    def __init__(self, port: int, cookie: str = "") -> None:
        self.port = port
        self.cookie = cookie

    def request(self, path: str, headers: dict[str, str] | None = None, *, body: bytes | None = None,
                method: str = "GET", read: int | None = None) -> tuple[int, dict[str, str], bytes, float, float]:
        """(status, headers, body, seconds to first body byte, seconds in all); ``read`` caps the body."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        sent = {"Cookie": self.cookie, **(headers or {})}
        start = time.perf_counter()
        conn.request(method, path, body=body, headers=sent)
        response = conn.getresponse()
        first = response.read(1)
        ttfb = time.perf_counter() - start
        rest = response.read() if read is None else response.read(max(0, read - 1))
        total = time.perf_counter() - start
        conn.close()
        headers = {k.lower(): v for k, v in response.getheaders()}
        headers["set-cookie"] = "\n".join(response.headers.get_all("set-cookie") or [])
        return response.status, headers, first + rest, ttfb, total


def _login(port: int) -> str:
    token = "benchcsrf0123456789"
    body = f"name=admin&password={PASSWORD}&csrf={token}&next=/".encode()
    status, headers, _, _, _ = Client(port, f"linetap_login={token}").request(
        "/login", {"Content-Type": "application/x-www-form-urlencoded"}, body=body, method="POST")
    cookies = [c.split(";", 1)[0] for c in headers["set-cookie"].split("\n") if c.startswith("linetap_session=")]
    if status != 303 or not cookies:
        raise RuntimeError(f"login failed: HTTP {status}")
    return cookies[0]


def _wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the console exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        threading.Event().wait(0.1)
    raise RuntimeError("the console did not start within 60 s")


def _cli(central: Path, *args: str) -> None:
    from linetap.sync.central.cli import main

    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["--data-dir", str(central), *args]) == 0, args


def _prepare(work: Path) -> tuple[Path, str, dict[str, Any]]:
    from linetap.sync.central.keys import keys_init
    from linetap.sync.central.index import SqliteIndex

    central = work / "central"
    keys_init(central)
    t0 = time.perf_counter()
    rid = evidence._record(work / "box", central, seconds=CALL_S)
    record_s = time.perf_counter() - t0
    _cli(central, "import", str(work / "box"))
    t0 = time.perf_counter()
    _cli(central, "peaks")
    peaks_s = time.perf_counter() - t0
    with SqliteIndex(central / "index.db") as index, index._sql() as db:
        db.execute("BEGIN IMMEDIATE")
        db.execute(consolesearch.LOAD)
        db.execute(f"UPDATE recordings SET metrics = {consolesearch.METRICS} WHERE device_id LIKE 'box-%'")
        t0 = time.perf_counter()
        fill_figures(db)
        fill_s = time.perf_counter() - t0
        db.execute("COMMIT")
        db.execute("ANALYZE")
    (work / "password").write_text(PASSWORD + "\n")
    _cli(central, "users", "add", "admin", "--role", "admin", "--password-file", str(work / "password"))
    _cli(central, "export", rid, "-o", str(work / "static.ogg"))
    return central, rid, {"record_hour_s": round(record_s, 1), "peaks_hour_s": round(peaks_s, 2),
                          "fill_figures_s": round(fill_s, 2)}


def _search(client: Client) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, path in consolesearch.QUERIES.items():
        times, status = [], None
        for _ in range(SEARCH_REPEATS):
            status, _, body, _, total = client.request(path)
            times.append(total)
        if b"must be" in body:  # a filter the page refused: the figure would be of another search
            raise RuntimeError(f"the calls page refused {path}")
        out[name] = {"status": status, **consolesearch.percentiles(times)}
    return out


def _minute_45(central: Path, rid: str) -> int:
    """The byte where minute 45 starts in the call's plaintext stream (10 s segments: segment 270)."""
    from linetap.sync.central.peaks import Peaks
    from linetap.sync.central.stored import Stored

    with Stored(central) as stored:
        row = stored.recording(rid)
        sizes = Peaks.from_bytes(stored.index.peaks(row["device_id"], rid)["data"]).sizes
    return sum(sizes[:45 * 60 // 10])


def _decrypt_hour(central: Path, rid: str) -> float:
    """Seconds to check and decrypt every segment of the call once, in one thread (no cache)."""
    import pyrage

    from linetap.sync.central.keys import load_identity
    from linetap.sync.central.stored import Stored

    identity = load_identity(central)
    with Stored(central) as stored:
        row = stored.recording(rid)
        entries = stored.checked_manifest(row)["segments"]
        start = time.perf_counter()
        for entry in entries:
            pyrage.decrypt(stored.checked_segment(row, entry), [identity])
        return time.perf_counter() - start


def _seek(client: Client, audio: str, offset: int) -> dict[str, Any]:
    headers = {"Range": f"bytes={offset}-"}
    cold = client.request(audio + "?listen=cold", headers, read=4096)
    ours = [client.request(f"{audio}?listen=s{i}", headers, read=4096)[3] for i in range(SEEK_REPEATS)]
    peer = [client.request(STATIC_PATH, headers, read=4096)[3] for _ in range(SEEK_REPEATS)]
    return {"status": cold[0], "cold_ttfb_ms": round(cold[3] * 1000, 2), "console": consolesearch.percentiles(ours),
            "static_file": consolesearch.percentiles(peer)}


def _listeners(client: Client, path: str, size: int) -> float:
    """Bytes per second for LISTENERS clients at once, each reading LISTEN_BYTES from its own point."""
    got = [0] * LISTENERS
    start_gate = threading.Barrier(LISTENERS + 1)

    def listen(i: int) -> None:
        offset = (size - LISTEN_BYTES) * i // LISTENERS
        start_gate.wait()
        got[i] = len(client.request(f"{path}{'?listen=l' + str(i) if 'calls' in path else ''}",
                                    {"Range": f"bytes={offset}-{offset + LISTEN_BYTES - 1}"})[2])

    threads = [threading.Thread(target=listen, args=(i,), name=f"listener-{i}") for i in range(LISTENERS)]
    for thread in threads:
        thread.start()
    start_gate.wait()
    t0 = time.perf_counter()
    for thread in threads:
        thread.join()
    return sum(got) / (time.perf_counter() - t0)


def run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as work_dir:
        work = Path(work_dir)
        central, rid, figures = _prepare(work)
        port = _free_port()
        code = f"from bench.console import serve; serve({str(central)!r}, {port}, {str(work / 'static.ogg')!r})"
        root = Path(__file__).resolve().parent.parent
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
        try:
            _wait_listening(port, proc)
            client = Client(port, _login(port))
            device = "bench-1"
            audio = f"/calls/{device}/{rid}/audio.ogg"
            size = (work / "static.ogg").stat().st_size
            seek = _seek(client, audio, _minute_45(central, rid))
            decrypt_s = _decrypt_hour(central, rid)
            search = _search(client)
            ours = _listeners(client, audio, size)
            peer = _listeners(client, STATIC_PATH, size)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return {"call_s": CALL_S, "audio_bytes": size, **figures, "decrypt_hour_one_thread_s": round(decrypt_s, 3), "search_rows": SEARCH_ROWS + 1,
            "search": search, "seek_minute_45": seek, "listeners": LISTENERS, "listen_bytes_each": LISTEN_BYTES,
            "listeners_console_bytes_per_s": round(ours), "listeners_static_bytes_per_s": round(peer),
            "listeners_ratio": round(ours / peer, 2),
            "search_server_time": consolesearch.run()}
