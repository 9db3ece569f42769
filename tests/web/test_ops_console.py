"""The fleet and retention pages on a real ``linetap-central web`` process of their own.

They change what they show (holds, erasures, commands sent), so they get a
store of their own instead of the shared one: a box's calls ingested by the
real ingest, ``[retention]`` that makes them due, and ``[broker]`` naming a
real Mosquitto where a box running the real FleetAgent answers signed
commands and the real tracker keeps the fleet tables. Route-level checks go
through plain HTTP, the rest through Chromium.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from central_boxes import make_box
from consoleclient import Client, WebProcess, log_in, password_of
from fleet_boxes import SimBox, device_key

from linetap.firmware.keys import public_key_b64
from linetap.sync.central.cli import main as central_main
from linetap.sync import fleetwire, updatewire
from linetap.sync.broker import LocalBroker
from linetap.sync.central.keys import load_identity, operator_public_key
from linetap.sync.central.tools import StoreTools
from linetap.sync.central.tracker import FleetTracker
from linetap.sync.mqtt import BrokerSettings

OPS_USERS = {"root": ("admin", None), "audrey": ("auditor", None), "ann": ("agent", "red"),
             "sue": ("supervisor", "red")}
DESK = "desk-9"  # the box whose calls are held and erased
FLEET_BOX = "fleet-1"  # the box on the broker
SCREENSHOTS = Path(__file__).parent / "screenshots"


@dataclass
class Ops:
    url: str
    data_dir: Path
    calls: list[str]  # desk-9's recordings, oldest first; calls[1] is flagged
    box: SimBox
    tracker: FleetTracker

    def tools(self) -> StoreTools:
        return StoreTools(self.data_dir)

    def client(self, name: str) -> Client:
        client = Client(self.url)
        assert client.login(name, password_of(name)).status == 303
        return client


@pytest.fixture(scope="session")
def ops(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ops]:
    root = tmp_path_factory.mktemp("ops")
    central = root / "central"
    _cli(central, "keys", "init")
    box = make_box(root / "boxes", DESK, load_identity(central))
    _cli(central, "enroll", DESK, "--signing-key", box.public_key_b64)
    calls = [box.call(2.0), box.call(1.5, flagged=True), box.call(1.0), box.call(1.0)]
    box.spool.close()
    _cli(central, "import", str(box.data_dir))  # from the box's card, through the real ingest core
    _cli(central, "enroll", FLEET_BOX, "--signing-key", public_key_b64(device_key(FLEET_BOX).public_key()))
    for name, (role, team) in OPS_USERS.items():
        secret = root / f"{name}.password"
        secret.write_text(password_of(name) + "\n")
        _cli(central, "users", "add", name, "--role", role, *(["--team", team] if team else []),
             "--password-file", str(secret))
    with LocalBroker(root / "broker", persistence=False) as broker:
        # The box's calls started on 2026-01-01 (its manual clock): a day's retention makes them due.
        (central / "central.toml").write_text(f'[broker]\nhost = "{broker.host}"\nport = {broker.port}\n\n'
                                              "[retention]\ndefault_days = 1\nflagged_days = 0\n")
        settings = BrokerSettings(host=broker.host, port=broker.port, tls=False, keepalive=10,
                                  reconnect_min_s=0.2, reconnect_max_s=2.0)
        with StoreTools(central) as tools, FleetTracker(tools.index, settings, client_id="ops-tracker") as tracker:
            tracker.wait_ready(10)
            fleet_box = SimBox(FLEET_BOX, broker.host, broker.port, operator_public_key(central)).start()
            try:
                assert fleet_box.wait_online(1)
                fleet_box.publish(fleet_box.agent.alarm("spool-full", active=True, detail="spool 96 % full"))
                # Its last update rolled back: the page shows the outcome and the box's reason.
                fleet_box.publish(fleetwire.Outbound(updatewire.state_topic(FLEET_BOX), updatewire.state_payload(
                    updatewire.UpdateState(state="rolled-back", current="1.4.0", version="1.5.0",
                                           outcome="rolled-back", code="selftest-failed",
                                           reason="spool: cannot write a probe file", at_ms=1)), qos=1, retain=True))
                tracker.flush(10)
                with WebProcess(central) as url:
                    yield Ops(url, central, calls, fleet_box, tracker)
            finally:
                fleet_box.close()


def _cli(data_dir: Path, *argv: str) -> None:
    assert central_main(["--data-dir", str(data_dir), *argv]) == 0, argv


def _form(client: Client, path: str, page: str, **fields: str):
    return client.post(path, {"csrf": client.csrf(page), **fields})


# ------------------------------------------------------------------ routes --

def test_who_may_see_and_act_on_the_fleet_and_retention_pages(ops: Ops) -> None:
    admin, auditor, agent, supervisor = (ops.client(n) for n in ("root", "audrey", "ann", "sue"))
    assert admin.get("/fleet").status == 200 and "Send a command" in admin.get("/fleet").text
    seen = auditor.get("/fleet")
    assert seen.status == 200 and FLEET_BOX in seen.text and "Send a command" not in seen.text
    assert "rolled-back (selftest-failed)" in seen.text and "spool: cannot write a probe file" in seen.text
    assert agent.get("/fleet").status == 403 and agent.get("/retention").status == 403
    assert supervisor.get("/retention").status == 403
    page = auditor.get("/retention")
    assert page.status == 200 and "Set legal hold" in page.text and "Erase..." not in page.text
    refused = _form(auditor, "/retention/erase", "/retention", device=DESK, recording=ops.calls[0], reason="x",
                    confirm=ops.calls[0])
    assert refused.status == 403
    assert _form(auditor, "/fleet/command", "/retention", device=FLEET_BOX, command="ping").status == 403
    with ops.tools() as tools:
        assert tools.index.recording(ops.calls[0], DESK)["erased_ms"] is None


@pytest.mark.parametrize(("fields", "status", "says"), [
    ({"device": DESK, "recording": "../../keys/operator.key", "reason": "x", "hold": "set"}, 400,
     "not a recording id"),
    ({"device": DESK, "recording": "0f6c1b2a-3c4d-4e5f-8a9b-0c1d2e3f4a5b", "reason": "x", "hold": "set"}, 404,
     "no recording"),
    ({"device": DESK, "recording": "{call}", "reason": "  ", "hold": "set"}, 400, "no reason"),
    ({"device": DESK, "recording": "{call}", "reason": "x", "hold": "maybe"}, 400, "set or release"),
    ({"device": DESK, "recording": "{call}", "reason": "x" * 600, "hold": "set"}, 400, "more than 500"),
])
def test_a_bad_hold_form_is_refused_naming_what_is_wrong(ops: Ops, fields: dict, status: int, says: str) -> None:
    admin = ops.client("root")
    fields = {k: v.replace("{call}", ops.calls[2]) for k, v in fields.items()}
    answer = _form(admin, "/retention/hold", "/retention", **fields)
    assert answer.status == status and says in answer.text, answer.text[:500]
    with ops.tools() as tools:
        assert not tools.index.recording(ops.calls[2], DESK)["hold"]


def test_an_erase_runs_only_once_the_recording_id_is_typed_again(ops: Ops) -> None:
    admin, target = ops.client("root"), ops.calls[3]
    for confirm in ("", "yes", ops.calls[0]):
        answer = _form(admin, "/retention/erase", "/retention", device=DESK, recording=target,
                       reason="caller asked (GDPR art. 17)", confirm=confirm)
        assert answer.status == 200 and "Type the recording id to confirm" in answer.text
    with ops.tools() as tools:
        assert tools.index.recording(target, DESK)["erased_ms"] is None


def test_a_bad_command_form_is_refused_and_nothing_is_sent(ops: Ops) -> None:
    admin = ops.client("root")
    for fields, says in (({"device": FLEET_BOX, "command": "format-disk"}, "not one of"),
                         ({"device": FLEET_BOX, "command": "identify", "seconds": "9999"}, "from 1 to 600"),
                         ({"device": "../x", "command": "ping"}, "not a device id")):
        answer = _form(admin, "/fleet/command", "/fleet", **fields, confirm="yes")
        assert answer.status == 400 and says in answer.text
    review = _form(admin, "/fleet/command", "/fleet", device=FLEET_BOX, command="restart")
    assert review.status == 200 and "Send restart to fleet-1" in review.text and "restarts" in review.text
    assert "restart" not in ops.box.calls


# ----------------------------------------------------------------- browser --

def _open(browser, ops: Ops, name: str):
    context = browser.new_context(base_url=ops.url, viewport={"width": 1280, "height": 860})
    page = context.new_page()
    log_in(page, name)
    return context, page


def test_the_fleet_page_shows_the_box_online_with_its_alarm_and_a_command_lands_in_the_access_log(
        browser, ops: Ops) -> None:
    context, page = _open(browser, ops, "root")
    try:
        page.goto("/fleet")
        row = page.locator(f"tr[data-device={FLEET_BOX}]")
        assert row.locator(".state").inner_text() == "online"
        assert "spool-full" in row.locator(".alarms").inner_text()
        assert "spool 96 % full" in row.locator(".alarms").inner_text()
        page.screenshot(path=str(SCREENSHOTS / "fleet.png"), full_page=True)
        page.select_option("select[name=device]", FLEET_BOX)
        page.select_option("select[name=command]", "identify")
        page.fill("input[name=seconds]", "20")
        page.click("text=Review command")
        assert "Send identify seconds=20 to fleet-1" in page.inner_text("main")
        page.click("text=Send it")
        assert "identify seconds=20 to fleet-1: ok" in page.inner_text("p.notice")
    finally:
        context.close()
    assert "identify" in ops.box.calls
    with ops.tools() as tools:
        entries = [e for e in tools.index.access_log(device_id=FLEET_BOX) if e["action"] == "fleet-command"]
    assert entries and entries[-1]["actor"] == "root" and entries[-1]["origin"].startswith("web 127.0.0.1")
    assert "identify seconds=20 to fleet-1" in entries[-1]["detail"] and entries[-1]["detail"].endswith(": ok")


def test_hold_then_release_with_reasons_and_a_held_call_cannot_be_erased(browser, ops: Ops) -> None:
    target = ops.calls[2]
    context, page = _open(browser, ops, "root")
    try:
        page.goto(f"/retention?device={DESK}&recording={target}")
        hold_form = page.locator("form[action='/retention/hold']").first
        hold_form.locator("input[name=reason]").fill("litigation hold, case 2026-114")
        hold_form.locator("button[value=set]").click()
        held = page.locator(f"table.holds tr[data-recording='{target}']")
        assert "litigation hold, case 2026-114" in held.inner_text()
        assert "kept: legal hold" in page.locator(f"table.due tr[data-recording='{target}']").inner_text()
        page.screenshot(path=str(SCREENSHOTS / "retention.png"), full_page=True)
        erase_form = page.locator("form[action='/retention/erase']")
        erase_form.locator("input[name=reason]").fill("try anyway")
        erase_form.locator("button").click()
        assert "on legal hold" in page.inner_text("p.error")
        page.goto("/retention")
        held = page.locator(f"table.holds tr[data-recording='{target}']")
        held.locator("input[name=reason]").fill("case 2026-114 settled")
        held.locator("button[value=clear]").click()
        assert page.locator(f"table.holds tr[data-recording='{target}']").count() == 0
        assert "will be erased" in page.locator(f"table.due tr[data-recording='{target}']").inner_text()
    finally:
        context.close()
    with ops.tools() as tools:
        actions = [(e["action"], e["detail"]) for e in tools.index.access_log(recording_id=target)]
    assert actions[-2:] == [("hold", "litigation hold, case 2026-114"), ("unhold", "case 2026-114 settled")]


def test_erase_with_a_reason_shows_the_verified_tombstone_and_the_preview_lists_what_is_due(
        browser, ops: Ops) -> None:
    target, flagged = ops.calls[0], ops.calls[1]
    context, page = _open(browser, ops, "root")
    try:
        page.goto("/retention")
        due = page.locator("table.due tbody").inner_text()
        assert target in due and ops.calls[3] in due and flagged not in due  # flagged calls are kept for ever
        page.goto(f"/retention?device={DESK}&recording={target}")
        erase_form = page.locator("form[action='/retention/erase']")
        erase_form.locator("input[name=reason]").fill("data subject request 2026-031")
        erase_form.locator("button").click()
        page.fill("input[name=confirm]", target)
        page.click("text=Erase for good")
        assert "erased" in page.inner_text("p.flash")
        tomb = page.locator(f"table.tombstones tr[data-recording='{target}']").inner_text()
        assert "data subject request 2026-031" in tomb and "verified" in tomb
        assert target not in page.locator("table.due tbody").inner_text()
        page.screenshot(path=str(SCREENSHOTS / "retention-erased.png"), full_page=True)
    finally:
        context.close()
    with ops.tools() as tools:
        row = tools.index.recording(target, DESK)
        assert row["erased_ms"] is not None and tools.index.objects(DESK, target) == []
        assert [e["detail"] for e in tools.index.access_log(recording_id=target) if e["action"] == "erase"] == \
            ["data subject request 2026-031"]


def test_a_config_push_is_reviewed_then_signed_applied_and_logged(ops: Ops) -> None:
    admin = ops.client("root")
    text = '[log]\nlevel = "debug"\n'
    review = _form(admin, "/fleet/config", "/fleet", device=FLEET_BOX, config=text)
    assert review.status == 200 and "Push this config to fleet-1" in review.text
    assert "apply_config" not in ops.box.calls
    refused = _form(admin, "/fleet/config", "/fleet", device=FLEET_BOX, config="[log]\nlevel = 7\n", confirm="yes")
    assert refused.status == 400 and "level" in refused.text
    done = _form(admin, "/fleet/config", "/fleet", device=FLEET_BOX, config=text, confirm="yes")
    assert done.status == 200 and "fleet-1: applied" in done.text, done.text[:2000]
    assert "apply_config" in ops.box.calls
    with ops.tools() as tools:
        entry = [e for e in tools.index.access_log(device_id=FLEET_BOX) if e["action"] == "fleet-config"][-1]
    assert entry["actor"] == "root" and ": applied" in entry["detail"]
