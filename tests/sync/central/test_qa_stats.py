"""Dashboard figures on known data, SVG charts well-formed and escaped, CSV safe for spreadsheets."""

from __future__ import annotations

import csv
import datetime as dt
import io
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from linetap.sync.central.qa import stats, svg
from linetap.sync.central.qa.forms import parse_form

SVG = "{http://www.w3.org/2000/svg}"
FORM = parse_form("""
id = "f"
version = 1
title = "F"
[[sections]]
title = "S"
[[sections.questions]]
id = "a"
text = "A"
kind = "yes_no"
critical = true
[[sections.questions]]
id = "b"
text = "B"
kind = "scale"
scale_max = 4
allow_na = true
""", source="f.toml")


def ms(day: str, hour: int = 12) -> int:
    return int(dt.datetime.fromisoformat(f"{day}T{hour:02d}:00:00+00:00").timestamp() * 1000)


def ev(day: str, score: int | None, a: str, b: Any, **more: Any) -> dict[str, Any]:
    return {"form_id": "f", "form_version": 1, "submitted_ms": ms(day), "score": score, "passed": (score or 0) >= 8000,
            "critical_failed": ("a",) if a == "no" else (), "answers": {"a": a, "b": b}, "state": "submitted"} | more


EVALS = [
    ev("2026-11-30", 10000, "yes", 4),  # Monday of ISO week 49
    ev("2026-12-02", 5000, "yes", 1),
    ev("2026-12-06", 0, "no", 3, state="disputed"),  # Sunday: still week 49
    ev("2026-12-07", 8750, "yes", "na"),  # week 50
    ev("2026-12-08", None, "yes", "na"),  # no score: in the count, not in the average
]


def test_summary_and_weekly_trend() -> None:
    assert stats.summary(EVALS) == {"evaluations": 5, "average": 5938, "passed": 2, "critical_failures": 1,
                                    "disputed": 1}
    assert stats.weekly(EVALS) == [{"week": "2026-W49", "evaluations": 3, "average": 5000},
                                   {"week": "2026-W50", "evaluations": 2, "average": 8750}]
    assert stats.summary([]) == {"evaluations": 0, "average": None, "passed": 0, "critical_failures": 0,
                                 "disputed": 0}


def test_failure_rate_per_question_leaves_not_applicable_out() -> None:
    rows = stats.question_failures(EVALS + [ev("2026-12-08", 1, "yes", 1) | {"form_version": 9}],
                                   {("f", 1): FORM})
    assert [(r["question"], r["answered"], r["failed"], r["rate"]) for r in rows] == [
        ("b", 3, 1, 0.3333), ("a", 5, 1, 0.2)]  # b: 4 and 3 pass, 1 of 4 fails; the unknown version is skipped
    assert rows[0]["text"] == "B"


CALLS = [
    {"started_ms": ms("2026-12-01", 9), "metrics": {"talk_s": {"near": 30.0, "far": 10.0}, "silence_share": 0.05,
                                                    "overtalk_share": 0.12, "hold_spans": [[10.0, 25.0], [40.0, 100.0]]}},
    {"started_ms": ms("2026-12-01", 15), "metrics": {"talk_s": {"near": 0, "far": 0}, "silence_share": 1,
                                                     "overtalk_share": 0, "hold_spans": []}},
    {"started_ms": ms("2026-12-03", 9), "metrics": None},
    {"started_ms": ms("2026-12-03", 10), "metrics": {"talk_s": {"near": "x", "far": -1}, "silence_share": 7,
                                                     "overtalk_share": float("nan"), "hold_spans": [[5, 1]]}},
    {"started_ms": None, "metrics": {"talk_s": [], "hold_spans": "no"}},
]


def test_call_figures_from_metrics_and_hostile_ones_left_out() -> None:
    assert stats.call_figures(CALLS[0]) == {"talk_ratio": 0.75, "silence_share": 0.05, "overtalk_share": 0.12,
                                            "hold_s": 75.0}
    assert stats.call_figures(CALLS[1]) == {"talk_ratio": None, "silence_share": 1.0, "overtalk_share": 0.0,
                                            "hold_s": 0.0}
    for call in CALLS[2:]:
        assert stats.call_figures(call) == {"talk_ratio": None, "silence_share": None, "overtalk_share": None,
                                            "hold_s": None}


def test_distributions_and_calls_per_day() -> None:
    d = stats.distributions(CALLS)
    assert [b["calls"] for b in d["talk_ratio"]] == [0, 0, 0, 0, 0, 0, 0, 1, 0, 0]  # 0.75 in [0.7, 0.8)
    assert [b["calls"] for b in d["silence_share"]] == [1, 0, 0, 0, 0, 0, 0, 0, 0, 1]  # 1.0 in the last bin
    assert [b["calls"] for b in d["hold_s"]] == [1, 0, 0, 1, 0, 0]
    assert stats.calls_per_day(CALLS) == [{"day": "2026-12-01", "calls": 2}, {"day": "2026-12-02", "calls": 0},
                                          {"day": "2026-12-03", "calls": 2}]
    assert stats.calls_per_day([]) == []


def test_csv_quotes_formulas_and_round_trips() -> None:
    text = stats.to_csv(["agent", "score"], [["=HYPERLINK(\"x\")", -12.5], ["@SUM(A1)", None], ["a,b\"c", "+1"]])
    rows = list(csv.reader(io.StringIO(text)))
    assert rows == [["agent", "score"], ["'=HYPERLINK(\"x\")", "-12.5"], ["'@SUM(A1)", ""], ["a,b\"c", "+1"]]


def parse(chart: str) -> ET.Element:
    root = ET.fromstring(chart)  # well-formed, or this raises
    assert root.tag == f"{SVG}svg" and root.get("role") == "img"
    for element in root.iter():
        assert element.tag != f"{SVG}script" and "style" not in element.attrib  # CSP allows neither inline
    return root


def test_bar_chart_is_well_formed_with_one_bar_per_value() -> None:
    root = parse(svg.bar_chart("Calls per day", ["2026-12-01", "2026-12-02"], [3, 0], unit=""))
    bars = root.findall(f"{SVG}rect")
    assert len(bars) == 2 and float(bars[0].get("height")) > 0 and float(bars[1].get("height")) == 0
    assert root.find(f"{SVG}title").text == "Calls per day"


def test_line_chart_gaps_and_scale() -> None:
    root = parse(svg.line_chart("Average score", ["W48", "W49", "W50", "W51"], [50.0, None, 87.5, 100.0],
                                y_max=100, unit="%"))
    assert len(root.findall(f"{SVG}circle")) == 3
    line = root.find(f"{SVG}polyline")
    assert len(line.get("points").split()) == 2  # the gap splits the line; a lone first point has no segment


@pytest.mark.parametrize("label", ["<script>alert(1)</script>", "a&b", "\"quoted\" 'x'", "]]>"])
def test_labels_are_escaped(label: str) -> None:
    for chart in (svg.bar_chart(label, [label], [1]), svg.line_chart(label, [label], [1], y_max=1)):
        root = parse(chart)
        assert root.get("aria-label") == label and root.find(f"{SVG}title").text == label


def test_empty_charts_say_no_data() -> None:
    for chart in (svg.bar_chart("x", [], []), svg.line_chart("x", ["a"], [None], y_max=1)):
        assert parse(chart).find(f"{SVG}text[@class='no-data']") is not None


def test_rows_per_agent_and_per_team() -> None:
    evals = [EVALS[0] | {"agent": "ann", "team": "red"}, EVALS[1] | {"agent": "bob", "team": "blue"},
             EVALS[2] | {"agent": "ann", "team": "red"}, EVALS[3] | {"agent": None, "team": None}]
    calls = [CALLS[0] | {"agent": "ann", "team": "red"}, CALLS[1] | {"agent": "ann", "team": "red"},
             CALLS[2] | {"agent": "cy", "team": "red"}]
    rows = stats.group_rows(evals, calls, key="agent")
    assert [r["agent"] for r in rows] == ["ann", "bob", "cy"]
    assert rows[0] | {} == {"agent": "ann", "evaluations": 2, "average": 5000, "passed": 1, "critical_failures": 1,
                            "disputed": 1, "calls": 2, "talk_ratio": 0.75, "silence_share": 0.525,
                            "overtalk_share": 0.06, "hold_s": 75.0}
    assert rows[2]["evaluations"] == 0 and rows[2]["talk_ratio"] is None and rows[2]["hold_s"] is None
    teams = stats.group_rows(evals, calls, key="team")
    assert [(t["team"], t["evaluations"], t["calls"]) for t in teams] == [("blue", 1, 0), ("red", 2, 3)]


def test_call_figures_read_the_decimal_strings_a_manifest_carries() -> None:
    # As a box writes them: no floats in its signed JSON, each figure its shortest decimal string.
    call = {"metrics": {"talk_s": {"near": "30.0", "far": "10.0"}, "silence_share": "0.25",
                        "overtalk_share": "0.05", "hold_spans": [["20.3", "33.8"]]}}
    assert stats.call_figures(call) == {"talk_ratio": 0.75, "silence_share": 0.25, "overtalk_share": 0.05,
                                        "hold_s": 33.8 - 20.3}
    for text in ("nan", "1e3", " 0.5", "0x10", "1" * 40, "٣"):  # not a plain decimal: left out
        assert stats.call_figures({"metrics": {"silence_share": text}})["silence_share"] is None
