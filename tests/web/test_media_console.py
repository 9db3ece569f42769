"""The call page's audio and waveform on a real console: Range answers, scope, one log entry per listen, Chromium.

A one-minute call (1 s segments, an announcement, a warning tone, a pause, a
mute and a masked DTMF span) is recorded by a real box, ingested into the
session's console store and given its peaks by ``linetap-central peaks``,
as ``serve`` would. Its desk belongs to nobody, so only the admin sees it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from central_boxes import RATE, make_box, uuid7_at
from consoleclient import Client, password_of

from linetap.firmware.callflow import CallEvent, CallRecord
from linetap.firmware.recorder import Recording
from linetap.firmware.spool import CodecParams, SpoolSink
from linetap.sync.central.cli import main as central_main
from linetap.sync.central.ingest import Ingest
from linetap.sync.central.keys import load_identity

CALL_S = 60
DEVICE = "desk-9"
SCREENSHOTS = Path(__file__).parent / "screenshots"  # made by the browser fixture


def cli(data_dir: Path, *argv: str) -> None:
    assert central_main(["--data-dir", str(data_dir), *argv]) == 0, argv


@pytest.fixture(scope="session")
def long_call(console_store, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The minute-long call's recording id, stored with its peaks."""
    central = console_store.data_dir
    box = make_box(tmp_path_factory.mktemp("media-box"), DEVICE, load_identity(central))
    cli(central, "enroll", DEVICE, "--signing-key", box.public_key_b64)
    rid = uuid7_at(box.clock.wall(), 99)
    call = CallRecord(rid, box.clock.monotonic(), box.clock.wall(), True)
    sink = SpoolSink(box.spool, CodecParams(rate=RATE, segment_s=1.0))
    sink.open(call)
    t = np.arange(RATE * CALL_S) / RATE
    # The agent talks in the first half of every 10 s, the caller in the second: the lanes differ.
    agent = np.sin(2 * np.pi * 300 * t) * ((t % 10) < 5)
    caller = np.sin(2 * np.pi * 500 * t) * ((t % 10) >= 5)
    frames = (np.stack([agent, caller], axis=1) * 8000).astype(np.int16)
    for start in range(0, len(frames), 160):
        sink.write(frames[start:start + 160])
        box.clock.advance(0.02)
    events = (CallEvent(0.0, "call-start", {}), CallEvent(0.2, "announcement-start", {}),
              CallEvent(3.0, "announcement-end", {}), CallEvent(15.0, "warning-tone", {}),
              CallEvent(20.0, "pause-start", {"reason": "card"}), CallEvent(24.0, "pause-end", {}),
              CallEvent(40.0, "mute-start", {}), CallEvent(42.0, "mute-end", {}), CallEvent(50.0, "flag", {}))
    ended = CallRecord(**{**call.__dict__, "recorded": True, "ended_by": "hang-up",
                          "ended_mono": box.clock.monotonic(), "events": events})
    sink.close(Recording(ended, len(frames), 0.0, ((33.0, 33.5),), {}))
    with Ingest(central) as core:
        acks = [ack for part in box.parts(rid) for ack in core.receive(part)]
    assert acks[-1].status == "stored"
    box.spool.close()
    cli(central, "peaks")
    return rid


def admin(console: str) -> Client:
    client = Client(console)
    client.login("root", password_of("root"))
    return client


def test_audio_is_the_recorded_stream_and_a_range_is_that_slice_of_it(console: str, console_store, long_call: str,
                                                                      tmp_path: Path) -> None:
    cli(console_store.data_dir, "export", long_call, "--device", DEVICE, "-o", str(tmp_path / "call.ogg"))
    expected = (tmp_path / "call.ogg").read_bytes()
    client = admin(console)
    url = f"/calls/{DEVICE}/{long_call}/audio.ogg?listen=whole"
    whole = client.request("GET", url)
    assert whole.status == 200 and whole.body == expected
    assert whole.headers["accept-ranges"] == "bytes" and whole.headers["content-type"] == "audio/ogg"
    assert whole.headers["cache-control"] == "no-store"
    size = len(expected)
    for first, last in ((0, 0), (1000, 50_000), (size * 3 // 4, size - 1), (size - 10, size + 500)):
        part = client.request("GET", url, headers={"Range": f"bytes={first}-{last}"})
        assert part.status == 206 and part.body == expected[first:last + 1]
        assert part.headers["content-range"] == f"bytes {first}-{min(last, size - 1)}/{size}"
    tail = client.request("GET", url, headers={"Range": "bytes=-100"})
    assert tail.status == 206 and tail.body == expected[-100:]


def test_a_range_outside_the_file_is_416(console: str, long_call: str) -> None:
    client = admin(console)
    url = f"/calls/{DEVICE}/{long_call}/audio.ogg"
    size = len(client.request("GET", url).body)
    answer = client.request("GET", url, headers={"Range": f"bytes={size}-"})
    assert answer.status == 416 and answer.headers["content-range"] == f"bytes */{size}"
    assert f"the file has {size} bytes" in answer.text


def test_one_listen_is_logged_once_however_many_ranges_it_asks(console: str, console_store, long_call: str) -> None:
    client = admin(console)

    def listens() -> int:
        with console_store.index() as tools:
            return sum(1 for e in tools.index.access_log(DEVICE, long_call) if e["action"] == "listen")

    before = listens()
    for first in (0, 4096, 20_000, 8192):
        client.request("GET", f"/calls/{DEVICE}/{long_call}/audio.ogg?listen=one",
                       headers={"Range": f"bytes={first}-"})
    assert listens() == before + 1
    client.request("GET", f"/calls/{DEVICE}/{long_call}/audio.ogg?listen=two", headers={"Range": "bytes=0-9"})
    assert listens() == before + 2
    with console_store.index() as tools:
        entry = [e for e in tools.index.access_log(DEVICE, long_call) if e["action"] == "listen"][-1]
    assert entry["actor"] == "root" and entry["origin"].startswith("web ")


def test_an_agent_cannot_fetch_another_agents_audio_or_peaks_by_url(console: str, console_store) -> None:
    bobs = [(d, r) for (d, r), agent in console_store.assigned.items() if agent == "bob"
            and (d, r) not in (console_store.erased, console_store.corrupt)][0]
    anns = [(d, r) for (d, r), agent in console_store.assigned.items() if agent == "ann"][0]
    ann = Client(console)
    ann.login("ann", password_of("ann"))
    for what in ("audio.ogg", "peaks.json"):
        assert ann.request("GET", f"/calls/{bobs[0]}/{bobs[1]}/{what}").status == 404
        assert ann.request("GET", f"/calls/{anns[0]}/{anns[1]}/{what}").status == 200
    assert ann.request("GET", f"/calls/{DEVICE}/../../keys/central.key/audio.ogg").status == 404
    assert Client(console).request("GET", f"/calls/{anns[0]}/{anns[1]}/audio.ogg").status == 303  # to the login


def test_an_erased_call_has_no_audio_and_says_why(console: str, console_store) -> None:
    device, rid = console_store.erased
    client = admin(console)
    answer = client.request("GET", f"/calls/{device}/{rid}/audio.ogg")
    assert answer.status == 410 and "erased" in answer.text


def test_peaks_are_two_lanes_with_the_calls_markers(console: str, long_call: str) -> None:
    body = json.loads(admin(console).request("GET", f"/calls/{DEVICE}/{long_call}/peaks.json").body)
    assert body["duration_ms"] == CALL_S * 1000 and body["bucket_ms"] == 50 and body["buckets"] == 1200
    agent, caller = body["lanes"]
    assert (agent["name"], caller["name"]) == ("agent", "caller")
    assert max(agent["max"][20:90]) > 20 and max(caller["max"][20:90]) == 0  # 1-4.5 s: the agent alone
    assert max(caller["max"][110:190]) > 20 and max(agent["max"][110:190]) == 0  # 5.5-9.5 s: the caller alone
    kinds = {(m["kind"], m["at_ms"]) for m in body["markers"]}
    assert {("announcement", 200), ("tone", 15000), ("pause", 20000), ("mute", 40000), ("masked-dtmf", 33000),
            ("flag", 50000)} <= kinds


def played_to(page, low: float, high: float, timeout_ms: int = 15_000) -> float:
    """The player's time once a timeupdate puts it between ``low`` and ``high`` (event driven: the page's CSP
    allows no eval, so Playwright's polling wait_for_function cannot run there)."""
    return page.evaluate("""([low, high, ms]) => new Promise((done, fail) => {
        const p = document.getElementById('player');
        const check = () => { if (p.currentTime > low && p.currentTime < high) { done(p.currentTime); } };
        p.addEventListener('timeupdate', check);
        check();
        setTimeout(() => fail(new Error('currentTime stayed at ' + p.currentTime)), ms); })""", [low, high, timeout_ms])


def test_in_chromium_the_call_plays_seeks_and_shows_its_waveform(login_page, long_call: str) -> None:
    page = login_page("admin")
    page.goto(f"/calls/{DEVICE}/{long_call}")
    page.wait_for_selector("#waveform[data-drawn=yes]", timeout=15_000)
    markers = page.eval_on_selector_all("#waveform-markers button", "bs => bs.map(b => b.dataset.kind)")
    assert {"announcement", "tone", "pause", "mute", "masked-dtmf", "flag"} <= set(markers)
    drawn = page.evaluate("""() => { const c = document.getElementById('waveform');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let ink = 0; for (let i = 3; i < d.length; i += 4) { if (d[i] > 0) ink++; } return ink; }""")
    assert drawn > 5000  # two lanes of a minute of tones, not an empty canvas
    page.evaluate("document.getElementById('player').play()")
    assert played_to(page, 1.0, CALL_S) > 1.0  # the audio element's time advances
    page.evaluate("document.getElementById('player').currentTime = 45")
    landed = played_to(page, 45.0, 48.0)
    assert 45.0 < landed < 48.0  # it landed at 45 s and plays on from there
    page.click("#waveform-markers button[data-kind=tone]")
    assert 14.0 < played_to(page, 14.0, 16.5) < 16.5
    box = page.locator("#waveform").bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.5, box["y"] + box["height"] / 2)
    assert 29.0 < played_to(page, 29.0, 31.5) < 31.5
    page.evaluate("document.getElementById('player').pause()")
    page.screenshot(path=str(SCREENSHOTS / "call-player-waveform.png"), full_page=True)
    page.goto("/calls")  # away first: the same page with only a new #fragment would not load again
    page.goto(f"/calls/{DEVICE}/{long_call}#t=52000")  # a search hit's link to a moment of the call
    page.wait_for_selector("#waveform[data-drawn=yes]", timeout=15_000)
    page.evaluate("document.getElementById('player').play()")
    assert 52.0 < played_to(page, 52.0, 55.0) < 55.0
