"""The console's test fixtures, shared by the whole session.

``console_store``: a central store filled by the real ingest (boxes from
``tests/sync/central/central_boxes.py`` recording with the box's own code),
users of every role and desk assignments over time (hot-desking: desk-1 is
ann's, then bob's). ``console``: a real ``linetap-central web`` process on a
free loopback port. ``browser``: Playwright driving the system's Chromium
(never a download). ``clocked_console``: the app in this process on its own
small store with a manual clock (idle timeouts, throttling windows).
Screenshots go to ``tests/web/screenshots/`` (git-ignored).
"""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from argon2 import PasswordHasher

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sync" / "central"))

from central_boxes import Box, make_box  # noqa: E402
from consoleclient import CLOCKED_WEB, ROLE_USER, USERS, log_in, password_of  # noqa: E402

from linetap.firmware.clock import ManualClock  # noqa: E402
from linetap.sync import wire  # noqa: E402
from linetap.sync.central.cli import main as central_main  # noqa: E402
from linetap.sync.central.ingest import Ingest  # noqa: E402
from linetap.sync.central.keys import load_identity  # noqa: E402
from linetap.sync.central.tools import StoreTools  # noqa: E402

SCREENSHOTS = Path(__file__).parent / "screenshots"
CHROMIUM = "/usr/bin/chromium"
START_TIMEOUT_S = 30.0
@dataclass
class ConsoleStore:
    data_dir: Path
    calls: dict[str, list[str]] = field(default_factory=dict)  # device -> recording ids in order
    erased: tuple[str, str] = ("", "")
    corrupt: tuple[str, str] = ("", "")

    def owner_calls(self, agent: str) -> list[tuple[str, str]]:
        return [(d, r) for d, r in self.assigned if self.assigned[(d, r)] == agent]

    assigned: dict[tuple[str, str], str] = field(default_factory=dict)  # (device, recording) -> agent

    def index(self):
        return StoreTools(self.data_dir)


def cli(data_dir: Path, *argv: str) -> None:
    assert central_main(["--data-dir", str(data_dir), *argv]) == 0, argv


# Test users' hashes are made with argon2id at a low cost: a hash carries its own parameters, so the
# console checks them as fast as they were made (the console itself hashes at argon2-cffi's defaults).
CHEAP = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


def add_users(data_dir: Path, tmp: Path, users: dict[str, tuple[str, str | None]]) -> None:
    """The first user through ``linetap-central users add --password-file``, the others straight into the
    index with cheap hashes."""
    first, *others = users.items()
    name, (role, team) = first
    secret = tmp / f"{name}.password"
    secret.write_text(password_of(name) + "\n")
    cli(data_dir, "users", "add", name, "--role", role, *(["--team", team] if team else []),
        "--password-file", str(secret))
    with StoreTools(data_dir) as tools:
        for name, (role, team) in others:
            tools.index.add_user(name, role, team, CHEAP.hash(password_of(name)), tools.now_ms())


def ingest(central: Path, box: Box, rids: list[str]) -> None:
    with Ingest(central, clock=ManualClock()) as core:
        for rid in rids:
            acks = [ack for part in box.parts(rid) for ack in core.receive(part)]
            final = [a for a in acks if a.object == wire.ObjectRef.manifest() and a.part is None][-1]
            assert final.status == "stored", final


@pytest.fixture(scope="session")
def console_store(tmp_path_factory: pytest.TempPathFactory) -> ConsoleStore:
    root = tmp_path_factory.mktemp("console")
    central = root / "central"
    cli(central, "keys", "init")
    store = ConsoleStore(central)
    boxes = {}
    for device in ("desk-1", "desk-2"):
        box = make_box(root / "boxes", device, load_identity(central))
        cli(central, "enroll", device, "--signing-key", box.public_key_b64)
        boxes[device] = box
    one, two = boxes["desk-1"], boxes["desk-2"]
    store.calls["desk-1"] = [one.call(3.0, number="+15550001", metrics=talk(2.0, 0.5)),  # the agent talks 80 %
                             one.call(2.0, flagged=True, number="+15550002"),
                             one.call(2.5, number="+15550003", metrics=talk(1.0, 1.0)),  # 50 %
                             one.call(1.5, number="+15550004", metrics=talk(1.0, 0.2))]
    store.calls["desk-2"] = [two.call(2.0, number="+15559001", name="Blue Caller", metrics=talk(0.5, 1.5)),  # 25 %
                             two.call(4.0, number=None, name=None)]
    for device, box in boxes.items():
        ingest(central, box, store.calls[device])
        box.spool.close()
    cli(central, "peaks")  # the waveforms, as serve makes them after ingest
    add_users(central, root, USERS)
    with StoreTools(central) as tools:
        rows = {r["recording_id"]: r for r in tools.index.recordings()}
    first = lambda device, n: rows[store.calls[device][n]]["started_ms"]  # noqa: E731
    # desk-1: ann's, then bob's from its third call on (hot-desking); desk-2: bob's throughout.
    for device, agent, since in (("desk-1", "ann", first("desk-1", 0) - 1000), ("desk-1", "bob", first("desk-1", 2)),
                                 ("desk-2", "bob", first("desk-2", 0) - 1000)):
        cli(central, "desks", "assign", device, agent, "--from", _iso_ms(since))
    for device, rids in store.calls.items():
        for n, rid in enumerate(rids):
            store.assigned[(device, rid)] = "ann" if device == "desk-1" and n < 2 else "bob"
    store.erased = ("desk-1", store.calls["desk-1"][3])
    cli(central, "erase", store.erased[1], "--device", "desk-1", "--reason", "caller asked (GDPR art. 17)")
    store.corrupt = ("desk-2", store.calls["desk-2"][1])
    manifest = rows[store.corrupt[1]]["manifest_key"]
    path = central / "objects" / manifest
    path.write_bytes(path.read_bytes().replace(b'"ended_by"', b'"ended_bx"'))
    return store


def talk(agent_s: float, caller_s: float) -> dict[str, object]:
    """QA metrics in the shape the box's :class:`~linetap.firmware.dsp.metrics.CallMetrics` gives them."""
    return {"duration_s": 3.0, "talk_s": {"near": agent_s, "far": caller_s}, "silence_share": 0.2,
            "overtalk_share": 0.01, "hold_spans": []}


def _iso_ms(ms: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")


@pytest.fixture(scope="session")
def console(console_store: ConsoleStore) -> Iterator[str]:
    """A real ``linetap-central web`` process on the store; yields its base URL (no trailing slash)."""
    with web_process(console_store.data_dir) as url:
        yield url


@contextmanager
def web_process(data_dir: Path, *args: str) -> Iterator[str]:
    """``linetap-central web --port 0`` on a data dir, until the block ends; its URL (no trailing slash)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "linetap.sync.central.cli", "--data-dir", str(data_dir), "web", "--port", "0",
         *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = _listening_url(process)
    drain = threading.Thread(target=lambda: [None for _ in process.stdout], name="console-log", daemon=True)
    drain.start()
    try:
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _listening_url(process: subprocess.Popen) -> str:
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    seen = []
    while selector.select(timeout=START_TIMEOUT_S):
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        if "console listening on " in line:
            return line.split("console listening on ", 1)[1].strip().rstrip("/")
    process.kill()
    raise AssertionError("the console did not start:\n" + "".join(seen))


# Users of the auth tests only (each test its own, so throttling one never locks out another).
CLOCKED_USERS = {name: ("agent", "red") for name in ("fixa", "csrfa", "csrfb", "tess", "addr", "idle", "redir",
                                                   "dis", "hdr")}


@dataclass
class TlsConsole:
    url: str
    ca_file: Path
    data_dir: Path


@pytest.fixture(scope="session")
def tls_console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsConsole]:
    """``web`` serving HTTPS itself ([web] tls_cert_file/tls_key_file) and trusting X-Forwarded-For from
    loopback (proxy_headers), on a store of users only."""
    from linetap.sync.pki import CertificateAuthority

    root = tmp_path_factory.mktemp("tls")
    central = root / "central"
    cli(central, "keys", "init")
    add_users(central, root, {"root": USERS["root"], "ann": USERS["ann"]})
    ca = CertificateAuthority.create(root / "ca")
    issued = ca.issue_server(("127.0.0.1",), name="web")
    (central / "central.toml").write_text(
        f'[web]\ntls_cert_file = "{issued.cert_file}"\ntls_key_file = "{issued.key_file}"\n'
        'proxy_headers = true\ntrusted_proxies = ["127.0.0.1"]\n')
    with web_process(central) as url:
        yield TlsConsole(url, ca.cert_file, central)


@dataclass
class Clocked:
    url: str
    clock: ManualClock
    data_dir: Path


@pytest.fixture(scope="session")
def clocked_console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clocked]:
    """The app served by uvicorn in this process on a store of users only, its clock in the test's hands."""
    import uvicorn

    from linetap.sync.central.config import load_config
    from linetap.sync.central.consolecli import _listen
    from linetap.sync.central.web.app import make_app
    from linetap.sync.central.web.settings import Settings

    root = tmp_path_factory.mktemp("clocked")
    central = root / "central"
    cli(central, "keys", "init")
    add_users(central, root, {**USERS, **CLOCKED_USERS})
    clock = ManualClock(wall_offset=1_800_000_000.0)
    config = load_config(None, central).model_copy(update={"web": CLOCKED_WEB})
    app = make_app(Settings(central, config, clock=clock))
    sock = _listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, access_log=False, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="clocked-console", daemon=True)
    thread.start()  # the socket listens already: requests wait in its backlog until the server accepts
    try:
        yield Clocked(f"http://127.0.0.1:{sock.getsockname()[1]}", clock, central)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=["--autoplay-policy=no-user-gesture-required"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def login_page(browser, console: str):
    """``login_page(role_or_user)``: a fresh browser context logged in; closed after the test."""
    contexts = []

    def open_as(who: str):
        name = ROLE_USER.get(who, who)
        context = browser.new_context(base_url=console, accept_downloads=True)
        contexts.append(context)
        page = context.new_page()
        log_in(page, name)
        return page

    yield open_as
    for context in contexts:
        context.close()
