"""A call's QA figures as numeric columns of ``recordings``, so both engines index and range-filter them.

A box's manifest carries its QA metrics as JSON with decimal strings
(:mod:`~linetap.firmware.dsp.metrics`), kept as sent in
``recordings.metrics``; no engine can index a range inside that text. The
figures a reviewer filters on (talk ratio, silence, over-talk, hold:
:data:`~linetap.sync.central.qa.stats.FIGURES`, derived by
:func:`~linetap.sync.central.qa.stats.call_figures`, the dashboards' own
reading) are kept beside it as ``DOUBLE PRECISION`` columns
(:data:`COLUMNS`: ``qa_`` and the figure's name), each with an index:

- written with the recording row, in its ``INSERT`` (:func:`figure_values`,
  from ``IndexTables.add_recording``); a figure the box gave no sensible value
  for is NULL, so it never matches a range;
- filled for recordings stored before the columns existed by the schema step
  that adds them, on SQLite and PostgreSQL alike (:func:`fill_figures`);
- cleared with the metrics when a recording is erased.

Columns rather than a table of (call, name, value) rows: a condition on a
column of ``recordings`` can be checked row by row on the way through the
started-time index, where a join to such a table leads with the table and
costs a lookup per call in the range (at 100,000 calls, a range holding a
third of them: 90 ms through the table, 23 ms as a column). SQLite's
planner cannot tell a wide range from a narrow one, so the calls search
lets a figure's index lead only when a probe finds the range narrow
(:func:`~linetap.sync.central.consoleindex.figure_index_leads`).

The calls search narrows with :func:`figure_condition`: one figure, a range.
"""

from __future__ import annotations

from typing import Any

from linetap.firmware import manifest as mf
from linetap.firmware import untrusted
from linetap.sync.central.qa.stats import FIGURES, call_figures

COLUMNS = {name: f"qa_{name}" for name in FIGURES}  # figure -> its column in recordings (never from input)
FILL_BATCH = 1000  # recordings read per statement while filling an older index


def figure_values(metrics: Any) -> list[float | None]:
    """The call's figures from its metrics (parsed JSON), in :data:`COLUMNS` order: None for a figure
    without a value in its range."""
    figures = call_figures({"metrics": metrics})
    return [figures[name] if figures[name] is not None and low <= figures[name] <= high else None
            for name, (low, high) in FIGURES.items()]


def fill_figures(db: Any) -> int:
    """Write the figures of every recording not erased that has metrics (a schema step, on a connection
    that speaks the index's dialect: sqlite3, or pgindex's ``PgConnection``); how many recordings had some.

    Paged by key, so a million recordings never sit in memory at once. A recording whose stored metrics
    do not parse (they were read with the manifest's bounds when it was indexed) keeps none."""
    after: tuple[str, str] = ("", "")
    filled = 0
    update = (f"UPDATE recordings SET {', '.join(f'{c} = ?' for c in COLUMNS.values())} "
              "WHERE device_id = ? AND recording_id = ?")
    while True:
        page = db.execute("SELECT device_id, recording_id, metrics FROM recordings WHERE (device_id, recording_id) "
                          "> (?, ?) AND metrics IS NOT NULL AND erased_ms IS NULL "
                          f"ORDER BY device_id, recording_id LIMIT {FILL_BATCH}", after).fetchall()
        if not page:
            return filled
        changes = []
        for device_id, recording_id, text in ((r[0], r[1], r[2]) for r in page):  # sqlite3.Row, pgindex.Row
            try:
                metrics = untrusted.loads(text, what=f"metrics of recording {recording_id}",
                                          max_bytes=mf.MAX_BYTES, max_depth=mf.MAX_DEPTH)
            except untrusted.Untrusted:
                continue
            values = figure_values(metrics)
            if any(v is not None for v in values):
                changes.append((*values, device_id, recording_id))
        db.executemany(update, changes)
        filled += len(changes)
        after = (page[-1][0], page[-1][1])


def figure_condition(name: str, low: float | None, high: float | None, *,
                     indexed: bool = True) -> tuple[str, list[Any]]:
    """(SQL condition on ``recordings``, its parameters): calls whose figure ``name`` lies in [low, high]
    (an end None: open; both: any value). ``name`` must be a key of ``FIGURES``. ``indexed`` False (SQLite
    only): the column as ``+column``, which SQLite's planner takes as "not through its index"."""
    column = COLUMNS.get(name)
    if column is None:
        raise ValueError(f"no QA figure {name!r}; choose one of {', '.join(FIGURES)}")
    column = column if indexed else f"+{column}"
    where, params = [], []
    for relation, bound in ((">=", low), ("<=", high)):
        if bound is not None:
            where.append(f"{column} {relation} ?")
            params.append(float(bound))
    return ("(" + " AND ".join(where) + ")" if where else f"{column} IS NOT NULL"), params
