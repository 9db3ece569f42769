"""The calls page's bounded count: past ``COUNT_CAP`` matches it says "more than", pages on by Next.

On the clocked console (the app in this process, so the cap can be made small) with 30 calls of one desk
written into its index.
"""

from __future__ import annotations

import re
import uuid

import pytest
from consoleclient import Client, password_of

from linetap.sync.central import consoleindex
from linetap.sync.central.index import SqliteIndex
from linetap.sync.central.web import calls as calls_page

DESK = "cap-desk"
CALLS = 30


@pytest.fixture(scope="module")
def capped_store(clocked_console):
    with SqliteIndex(clocked_console.data_dir / "index.db") as index:
        for n in range(1, CALLS + 1):
            started = 1_000_000 + n * 60_000
            index.add_recording({
                "recording_id": str(uuid.UUID(int=n)), "device_id": DESK, "seq": n, "started_ms": started,
                "ended_ms": started + 1000, "duration_ms": 1000, "flagged": False, "recorded": True,
                "discarded": False, "ended_by": "hang-up", "consent": [], "metrics": None,
                "caller_number": f"+1555{n:04d}", "caller_name": None, "caller_withheld": None,
                "manifest_sha256": f"{n:064x}", "prev": f"{n - 1:064x}", "segments": 1, "bytes": 10,
                "manifest_key": f"{DESK}/{n}/manifest.json", "stored_ms": started + 5000})
    client = Client(clocked_console.url)
    assert client.login("root", password_of("root")).status == 303
    return client


def listed(text: str) -> list[str]:
    return re.findall(r'class="call-link" href="/calls/[^/]+/([^"]+)"', text)


def with_cap(monkeypatch: pytest.MonkeyPatch, cap: int) -> None:
    monkeypatch.setattr(consoleindex, "COUNT_CAP", cap)
    monkeypatch.setattr(calls_page, "COUNT_CAP", cap)


def test_past_the_cap_the_page_says_more_than_and_pages_on(capped_store: Client,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    with_cap(monkeypatch, 20)
    first = capped_store.get(f"/calls?desk={DESK}&n=25")
    assert "(more than 20 found)" in first.text and "Page 1</span>" in first.text and " of " not in \
        first.text.split('<div class="pager">')[1]
    assert len(listed(first.text)) == 25 and 'page=2">Next' in first.text  # a full page: there may be more
    second = capped_store.get(f"/calls?desk={DESK}&n=25&page=2")
    assert len(listed(second.text)) == 5 and "Next" not in second.text.split('<div class="pager">')[1]
    assert set(listed(first.text)).isdisjoint(listed(second.text))
    far = capped_store.get(f"/calls?desk={DESK}&n=25&page=3")  # past the last call, still "more than"
    assert listed(far.text) == [] and "(more than 20 found)" in far.text


def test_under_the_cap_the_page_says_how_many(capped_store: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    with_cap(monkeypatch, CALLS)
    page = capped_store.get(f"/calls?desk={DESK}&n=25")
    assert f"({CALLS} found)" in page.text and "Page 1 of 2" in page.text and 'page=2">Next' in page.text
    with_cap(monkeypatch, CALLS - 1)  # one more than the cap: counted as "more than"
    assert f"(more than {CALLS - 1} found)" in capped_store.get(f"/calls?desk={DESK}&n=25").text
