"""The screenshots the README's section for QA staff shows, taken on what ``make demo`` leaves behind.

``linetap demo`` runs whole (three calls with speech, synced through a real
broker and ingest, waveforms made); the console is then started on its
central store as the demo's last lines say, and its admin logs in with the
one-time password the demo printed, opens a call, scores it on a form an
admin added with ``linetap-central forms add``, and looks at the dashboards
and the access log. Fleet and retention pictures come from
``test_ops_console.py``, whose store has a box online and calls due.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from consoleclient import WebProcess

from linetap.sync.central.cli import main as central_main
from linetap.sync.central.tools import StoreTools

SCREENSHOTS = Path(__file__).parent / "screenshots"
FORM = """
id = "compliance"
version = 1
title = "Compliance and courtesy"
pass_score = 80

[[sections]]
title = "Consent"
[[sections.questions]]
id = "announced"
text = "The recording announcement played before the conversation"
kind = "yes_no"
critical = true
[[sections.questions]]
id = "card"
text = "No card data spoken aloud"
kind = "yes_no"
weight = 3
allow_na = true

[[sections]]
title = "Courtesy"
[[sections.questions]]
id = "tone"
text = "Friendly, clear tone"
kind = "scale"
scale_max = 5
"""


@dataclass
class Demo:
    url: str
    central: Path
    password: str
    first_call: str  # its page


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    work = tmp_path_factory.mktemp("readme") / "demo"
    ran = subprocess.run([sys.executable, "-m", "linetap.firmware.cli", "demo", "--data-dir", str(work)],
                         capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr
    found = re.search(r"--data-dir (\S+) web\n.*one-time password (\S+)\n", ran.stdout)
    assert found, ran.stdout[-1500:]
    central = Path(found[1])
    form = work.parent / "compliance.toml"
    form.write_text(FORM)
    assert central_main(["--data-dir", str(central), "forms", "add", str(form)]) == 0
    with StoreTools(central) as tools:
        first = next(r for r in tools.index.recordings() if r["segments"])
    # The demo's desk is an agent's, so the dashboards have someone to show.
    for argv in (["users", "add", "ann", "--role", "agent", "--team", "red", "--generate"],
                 ["desks", "assign", first["device_id"], "ann", "--from", "2025-12-31T00:00:00"]):
        assert central_main(["--data-dir", str(central), *argv]) == 0, argv
    with WebProcess(central) as url:
        yield Demo(url, central, found[2], f"/calls/{first['device_id']}/{first['recording_id']}")


def test_the_readme_pictures_of_the_demo_in_the_console(browser, demo: Demo) -> None:
    context = browser.new_context(base_url=demo.url, viewport={"width": 1280, "height": 800})
    page = context.new_page()
    try:
        page.goto("/login")
        page.fill("input[name=name]", "admin")
        page.fill("input[name=password]", demo.password)
        page.screenshot(path=str(SCREENSHOTS / "readme-login.png"))
        page.click("button[type=submit]")
        page.wait_for_url("**/calls*")
        assert page.locator("main table tbody tr").count() >= 2
        page.screenshot(path=str(SCREENSHOTS / "readme-calls.png"), full_page=True)

        page.goto(demo.first_call)  # the demo's first call: announced, card digits masked, flagged
        page.wait_for_selector("#waveform[data-drawn=yes]")
        page.screenshot(path=str(SCREENSHOTS / "readme-call.png"), full_page=True)

        page.check("input[name=q_announced][value=yes]")
        page.check("input[name=q_card][value=na]")
        page.check("input[name=q_tone][value='4']")
        page.fill("textarea[name=note]", "announcement clear; caller opted in")
        page.click("#scoring-submit")
        page.wait_for_url("**#evaluations")
        assert "Evaluation submitted" in page.inner_text(".flash")
        page.click("tr.qa-evaluation >> nth=-1 >> a")
        page.screenshot(path=str(SCREENSHOTS / "readme-evaluation.png"), full_page=True)

        page.goto("/dashboards?since=2000-01-01")
        assert page.locator("#charts svg").count() > 0
        page.screenshot(path=str(SCREENSHOTS / "readme-dashboards.png"))  # the charts; the tables go on below

        page.goto("/auditlog")
        assert "the chain holds" in page.inner_text("#verify")
        log = page.inner_text("table.auditlog")
        assert "login" in log and "evaluate" in log
        page.screenshot(path=str(SCREENSHOTS / "readme-access-log.png"), full_page=True)
    finally:
        context.close()
