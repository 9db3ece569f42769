"""The remote update end to end, every part a real process (issue 17's "Done when").

One site for the module (tests/update_site.py): a real Mosquitto, a real
``linetap-central serve`` (tracker and chunk server), and a real box,
``linetap run`` under the test supervisor that plays systemd (gate, launcher,
Restart=always, path unit for root's step). The operator works the command
line. The three cases run in order on that one box, each from the version
the one before left running:

a. the working tree at the next version is released, pushed, fetched over
   MQTT, prepared by root, switched to while idle, self-tested, kept, and
   reported;
b. a release built from a tree whose self-test fails rolls itself back to (a)'s
   version, and the centre shows ``rolled-back`` with ``selftest-failed``;
c. a release pushed while a call is up waits for the hang-up, then switches.

Nothing sleeps: the tests wait on the supervisor's events (process started,
READY), on the box's ``update/state`` messages, or on ``fleet update status``
polled against a deadline.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import update_helpers as uh
from update_site import Site

from linetap.sync.broker import LocalBroker

pytestmark = pytest.mark.slow

DEVICE = "lt-e2e-update"
BROKEN_SELFTEST = '''

def _broken_pipeline(config):
    raise RuntimeError("this release's pipeline is broken on purpose (a test release)")


check_pipeline = _broken_pipeline
'''


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    with LocalBroker(tmp_path_factory.mktemp("update-e2e-broker"), persistence=False) as running:
        yield running


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, broker: LocalBroker) -> Iterator[Site]:
    kit = uh.Kit(tmp_path_factory.mktemp("update-e2e-kit"))
    with Site(tmp_path_factory.mktemp("update-e2e-site"), broker, kit, DEVICE) as running:
        yield running


def versions(site: Site) -> tuple[str, str, str]:
    """(a)'s, (b)'s and (c)'s versions: the tree's version bumped once, twice, three times."""
    first = uh.next_version(site.kit.factory)
    second = uh.next_version(first)
    return first, second, uh.next_version(second)


def break_selftest(tree: Path) -> None:
    """A broken release: its pipeline check raises (a tree change, not a hook in the product)."""
    module = tree / "firmware" / "selftest.py"
    module.write_text(module.read_text() + BROKEN_SELFTEST)


@pytest.mark.timeout(300)
def test_a_new_version_is_pushed_fetched_prepared_switched_while_idle_kept_and_reported(site: Site) -> None:
    new = versions(site)[0]
    built = site.build_release(new)
    assert built["version"] == new
    mark, states = len(site.box.events), len(site.watcher.states)
    rollout = site.push(new)
    site.watcher.wait_state(lambda s: s["state"] == "fetching" and s["version"] == new, after=states)
    ready = site.box.wait_for(lambda e: e[:2] == ("ready", new), after=mark)
    site.watcher.wait_state(lambda s: s.get("outcome") == "installed" and s["version"] == new, after=states)
    row = site.target(rollout, lambda r: r["outcome"] is not None)
    assert (row["outcome"], row["state"]) == ("installed", "installed"), row
    listed = site.listed()
    assert listed["software_version"] == new and listed["update_state"] == "installed", listed
    # The process running now is the new version's, started once by the switch and not since.
    started = [e for e in site.box.events[mark:] if e[0] == "started"]
    assert [e[1] for e in started] == [new] and site.box.pid == started[0][2]
    assert site.current() == new and site.box.events.index(ready) > site.box.events.index(started[0])


@pytest.mark.timeout(300)
def test_a_release_whose_self_test_fails_rolls_itself_back_and_the_centre_says_why(site: Site) -> None:
    good, broken, _ = versions(site)
    assert site.current() == good, "runs after the first case, from its version"
    site.build_release(broken, patch=break_selftest)
    mark, states = len(site.box.events), len(site.watcher.states)
    rollout = site.push(broken)
    site.box.wait_for(lambda e: e[:2] == ("started", broken), after=mark)  # switched, on trial
    site.watcher.wait_state(lambda s: s.get("outcome") == "rolled-back", after=states)
    back = site.box.wait_for(lambda e: e[:2] == ("ready", good), after=mark)
    row = site.target(rollout, lambda r: r["outcome"] is not None)
    assert (row["outcome"], row["code"]) == ("rolled-back", "selftest-failed"), row
    assert "pipeline" in row["reason"], row
    assert site.current() == good and site.listed()["software_version"] == good
    after = [e for e in site.box.events[site.box.events.index(back):] if e[0] == "started"]
    assert after == [], f"the old version keeps running once back: {after}"


@pytest.mark.timeout(300)
def test_a_push_during_a_call_waits_for_the_hang_up_then_switches(site: Site) -> None:
    good, _, new = versions(site)
    assert site.current() == good, "runs after the second case, from the version it went back to"
    site.build_release(new)
    site.handset(off_hook=True)
    try:
        mark, states = len(site.box.events), len(site.watcher.states)
        rollout = site.push(new)
        site.watcher.wait_state(lambda s: s["state"] == "waiting-idle" and s["version"] == new, after=states)
        pong = json.loads(site.central("fleet", "cmd", DEVICE, "ping", "--json", "--timeout", "20"))
        assert pong["result"]["figures"]["recording"] is True, pong  # the call is up while the box waits
        assert site.target(rollout, lambda r: r["state"] is not None)["state"] == "waiting-idle"
        assert not [e for e in site.box.events[mark:] if e[0] in ("started", "exited")]
        assert site.current() == good
        hung_up = len(site.box.events)
    finally:
        site.handset(off_hook=False)
    site.box.wait_for(lambda e: e[:2] == ("ready", new), after=hung_up)
    row = site.target(rollout, lambda r: r["outcome"] is not None)
    assert row["outcome"] == "installed" and site.current() == new, row
