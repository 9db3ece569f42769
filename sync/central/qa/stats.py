"""Dashboard figures from evaluations and calls: plain functions over rows the shell read.

Evaluations are the index's newest versions (``score`` in hundredths of a
percent, ``answers``, ``form_id``/``form_version``, ``submitted_ms``); calls
are recording rows with their ``metrics`` (the box's
:mod:`~linetap.firmware.dsp.metrics`: ``talk_s`` per side, ``silence_share``,
``overtalk_share``, ``hold_spans``). The near side is the agent's, the far
side the caller's. A box's metrics are read defensively: a figure that is
missing, not a number or out of its range leaves that call out of that
figure, never the page.

Weeks are ISO weeks and days are UTC days. Tables come out as a header and
rows, for the page and for :func:`to_csv`.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from linetap.sync.central.qa.forms import Form
from linetap.sync.central.qa.scoring import answer_fraction

FAIL_BELOW = 0.5  # an answer earning less than this share of the best answer is a failure of the question
MAX_CALL_S = 7 * 24 * 3600.0  # a figure in seconds past a week is not a call's


def _day(ms: int) -> dt.date:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).date()


def _week(ms: int) -> str:
    year, week, _ = _day(ms).isocalendar()
    return f"{year}-W{week:02d}"


def _average(values: Sequence[int]) -> int | None:
    return round(sum(values) / len(values)) if values else None


def summary(evaluations: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """How many evaluations, the average score, how many passed and failed a critical item."""
    scores = [e["score"] for e in evaluations if e["score"] is not None]
    return {"evaluations": len(evaluations), "average": _average(scores),
            "passed": sum(1 for e in evaluations if e["passed"]),
            "critical_failures": sum(1 for e in evaluations if e["critical_failed"]),
            "disputed": sum(1 for e in evaluations if e.get("state") == "disputed")}


def weekly(evaluations: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per ISO week of submission: evaluations and their average score, oldest week first."""
    weeks: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for e in evaluations:
        weeks[_week(e["submitted_ms"])].append(e)
    return [{"week": week, "evaluations": len(rows),
             "average": _average([e["score"] for e in rows if e["score"] is not None])}
            for week, rows in sorted(weeks.items())]


def question_failures(evaluations: Iterable[Mapping[str, Any]],
                      forms: Mapping[tuple[str, int], Form]) -> list[dict[str, Any]]:
    """Per question of each form version: times answered (not N/A), times failed, the failure rate;
    the most failed first."""
    answered: Counter[tuple[str, int, str]] = Counter()
    failed: Counter[tuple[str, int, str]] = Counter()
    for e in evaluations:
        form = forms.get((e["form_id"], e["form_version"]))
        if form is None:
            continue
        for _, question in form.questions():
            share = answer_fraction(question, e["answers"].get(question.id, "na"))
            if share is None:
                continue
            key = (form.id, form.version, question.id)
            answered[key] += 1
            failed[key] += share < FAIL_BELOW
    rows = []
    for key, n in answered.items():
        form = forms[key[:2]]
        question = form.question(key[2])
        rows.append({"form": key[0], "version": key[1], "question": key[2],
                     "text": question.text if question else key[2], "answered": n, "failed": failed[key],
                     "rate": round(failed[key] / n, 4)})
    return sorted(rows, key=lambda r: (-r["rate"], r["form"], r["version"], r["question"]))


# How a manifest carries a non-integer figure: its shortest decimal string (firmware/manifest.py).
DECIMAL = re.compile(r"-?[0-9]{1,15}(?:\.[0-9]{1,17})?")


def _number(value: Any, lo: float, hi: float) -> float | None:
    if isinstance(value, str) and DECIMAL.fullmatch(value):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) and lo <= value <= hi else None


# A call's figures (:func:`call_figures`) and the range each is kept in: shares of the call (0..1), seconds.
# The index keeps them as numbers (``call_figures``) so the calls page can filter on them.
FIGURES = {"talk_ratio": (0.0, 1.0), "silence_share": (0.0, 1.0), "overtalk_share": (0.0, 1.0),
           "hold_s": (0.0, MAX_CALL_S)}


def call_figures(call: Mapping[str, Any]) -> dict[str, float | None]:
    """A call's talk ratio (the agent's share of all talk), silence and over-talk shares, and seconds on
    hold, from its manifest's metrics; None where the box gave none that makes sense."""
    metrics = call.get("metrics")
    metrics = metrics if isinstance(metrics, Mapping) else {}
    talk = metrics.get("talk_s") if isinstance(metrics.get("talk_s"), Mapping) else {}
    near, far = _number(talk.get("near"), 0, MAX_CALL_S), _number(talk.get("far"), 0, MAX_CALL_S)
    ratio = near / (near + far) if near is not None and far is not None and near + far > 0 else None
    spans = metrics.get("hold_spans")
    hold: float | None = None
    if isinstance(spans, list) and len(spans) <= 10_000:
        hold = 0.0
        for span in spans:
            if not (isinstance(span, list) and len(span) == 2):
                hold = None
                break
            a, b = _number(span[0], 0, MAX_CALL_S), _number(span[1], 0, MAX_CALL_S)
            if a is None or b is None or b < a:
                hold = None
                break
            hold += b - a
    return {"talk_ratio": ratio, "silence_share": _number(metrics.get("silence_share"), 0, 1),
            "overtalk_share": _number(metrics.get("overtalk_share"), 0, 1), "hold_s": hold}


SHARE_EDGES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
HOLD_EDGES = (0.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


def histogram(values: Iterable[float | None], edges: Sequence[float]) -> list[dict[str, Any]]:
    """Counts per bin [edges[i], edges[i+1]) (the last bin closed; values past the last edge in it too)."""
    counts = [0] * (len(edges) - 1)
    for value in values:
        if value is None or value < edges[0]:
            continue
        i = next((i for i in range(len(counts)) if value < edges[i + 1]), len(counts) - 1)
        counts[i] += 1
    return [{"from": edges[i], "to": edges[i + 1], "calls": n} for i, n in enumerate(counts)]


def distributions(calls: Iterable[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The four call distributions: talk ratio, silence, over-talk (shares) and hold (seconds)."""
    figures = [call_figures(c) for c in calls]
    return {name: histogram((f[name] for f in figures), HOLD_EDGES if name == "hold_s" else SHARE_EDGES)
            for name in FIGURES}


def calls_per_day(calls: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Calls per UTC day of their start, every day from the first to the last (quiet days as 0)."""
    days = Counter(_day(c["started_ms"]) for c in calls if isinstance(c.get("started_ms"), int))
    if not days:
        return []
    first, last = min(days), max(days)
    if (last - first).days > 3660:
        first = last - dt.timedelta(days=3660)
    out, day = [], first
    while day <= last:
        out.append({"day": day.isoformat(), "calls": days.get(day, 0)})
        day += dt.timedelta(days=1)
    return out


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(sum(present) / len(present), 3) if present else None


GROUP_COLUMNS = ("evaluations", "average", "passed", "critical_failures", "disputed", "calls", "talk_ratio",
                 "silence_share", "overtalk_share", "hold_s")


def group_rows(evaluations: Sequence[Mapping[str, Any]], calls: Sequence[Mapping[str, Any]], *,
               key: str) -> list[dict[str, Any]]:
    """One row per agent (``key="agent"``) or team (``"team"``): the evaluation summary and the calls'
    mean talk ratio, silence and over-talk, and their total hold; rows and calls without one are left out."""
    names = sorted(({e.get(key) for e in evaluations} | {c.get(key) for c in calls}) - {None})
    rows = []
    for name in names:
        figures = [call_figures(c) for c in calls if c.get(key) == name]
        holds = [f["hold_s"] for f in figures if f["hold_s"] is not None]
        rows.append({key: name, **summary([e for e in evaluations if e.get(key) == name]), "calls": len(figures),
                     **{m: _mean(f[m] for f in figures) for m in ("talk_ratio", "silence_share", "overtalk_share")},
                     "hold_s": round(sum(holds), 1) if holds else None})
    return rows


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    # A cell a spreadsheet would run as a formula is written as text.
    if text.startswith(_FORMULA_START) and not _is_plain_number(text):
        return "'" + text
    return text


def _is_plain_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return text.strip() == text


def to_csv(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A table as CSV text; a cell that starts like a spreadsheet formula is quoted as text."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([_cell(h) for h in header])
    for row in rows:
        writer.writerow([_cell(v) for v in row])
    return out.getvalue()
