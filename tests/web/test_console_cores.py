"""The console's pure parts: the calls query read as hostile input, scopes, desk spans, markers, selections."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from linetap.sync.central.consoleindex import Search, Span, search_where
from linetap.sync.central.web.access import Scope, agent_at, agent_spans, scope_of
from linetap.sync.central.web.bulk import MAX_CALLS, selected
from linetap.sync.central.web.callpage import markers
from linetap.sync.central.web.callquery import FIELDS, parse

ASSIGNMENTS = [{"device_id": "d1", "agent": "ann", "from_ms": 100, "until_ms": 300},
               {"device_id": "d1", "agent": "bob", "from_ms": 300, "until_ms": None},
               {"device_id": "d2", "agent": "bob", "from_ms": 0, "until_ms": None}]


def test_a_good_query_becomes_search_filters() -> None:
    q = parse({"since": "2026-01-31", "until": "2026-02-01T09:00", "desk": "d1", "agent": "ann", "team": "red",
               "caller": "555", "min_s": "30", "max_s": "600", "flagged": "yes", "consent": "opted-out",
               "sort": "duration", "dir": "asc", "page": "3", "n": "25"})
    assert not q.problems
    assert q.filters == {"since_ms": 1769817600000, "until_ms": 1769936400000, "device_id": "d1", "caller": "555",
                         "min_duration_ms": 30000, "max_duration_ms": 600000, "flagged": True,
                         "consent": "opted-out", "sort": "duration", "descending": False}
    assert (q.agent, q.team, q.page, q.size) == ("ann", "red", 3, 25)


def test_each_bad_value_is_named_and_left_out() -> None:
    q = parse({"since": "yesterday", "min_s": "-1", "max_s": "٣", "flagged": "maybe", "consent": "x",
               "sort": "caller_number; DROP", "dir": "up", "page": "0", "n": "7", "caller": "x" * 101})
    assert q.filters == {} and q.page == 1 and q.size == 50
    assert len(q.problems) == 10 and all(p.split(" ", 1)[0].strip(":") in FIELDS for p in q.problems)


def test_a_qa_metric_filter_is_whole_units_of_a_named_metric() -> None:
    assert parse({"metric": "talk_ratio", "min": "30", "max": "60"}).filters == {"figure": ("talk_ratio", 0.3, 0.6)}
    assert parse({"metric": "hold_s", "min": "90"}).filters == {"figure": ("hold_s", 90.0, None)}
    assert parse({"metric": "silence_share"}).filters == {"figure": ("silence_share", None, None)}
    for params, problem in (({"metric": "talk_ratio", "min": "101"}, "min '101': not a whole percent from 0 to 100"),
                            ({"metric": "hold_s", "max": "0.5"}, "max '0.5': not a whole number of seconds"),
                            ({"metric": "talk", "min": "3"}, "metric 'talk': must be one of talk_ratio, "),
                            ({"min": "3"}, "min/max: choose a QA metric"),
                            ({"metric": "overtalk_share", "min": "20", "max": "10"}, "min 20 is more than max 10")):
        q = parse(params)
        assert q.filters == {} and len(q.problems) == 1 and q.problems[0].startswith(problem), q.problems


@given(st.dictionaries(st.sampled_from(FIELDS + ("other",)), st.text(max_size=200)))
def test_any_query_parses_into_a_search_without_raising(params: dict[str, str]) -> None:
    q = parse(params)
    where, values = search_where(Search(**q.filters))
    assert where.count("?") == len(values)


def test_scopes_by_role() -> None:
    class Index:
        def desk_assignments(self):
            return ASSIGNMENTS

        def users(self):
            return [{"name": "ann", "team": "red", "role": "agent"}, {"name": "bob", "team": "blue", "role": "agent"},
                    {"name": "sue", "team": "red", "role": "supervisor"}]

    def user(name, role, team=None, audio=False):
        return {"name": name, "role": role, "team": team, "audio_granted": audio}

    assert scope_of(Index(), user("root", "admin")) == Scope(None, True)
    assert scope_of(Index(), user("aud", "auditor")) == Scope(None, False)
    assert scope_of(Index(), user("aud", "auditor", audio=True)).audio
    assert scope_of(Index(), user("ann", "agent")).spans == (Span("d1", 100, 300),)
    assert scope_of(Index(), user("sue", "supervisor", "red")).spans == (Span("d1", 100, 300),)
    assert scope_of(Index(), user("rex", "reviewer")).spans == ()  # no team: nothing
    ann = scope_of(Index(), user("ann", "agent"))
    assert ann.covers({"device_id": "d1", "started_ms": 299}) and not ann.covers({"device_id": "d1", "started_ms": 300})
    assert not ann.covers({"device_id": "d1", "started_ms": None}) and not ann.covers({"device_id": "d2",
                                                                                      "started_ms": 150})


def test_a_call_belongs_to_the_agent_at_its_desk_when_it_started() -> None:
    assert agent_at(ASSIGNMENTS, "d1", 150) == "ann" and agent_at(ASSIGNMENTS, "d1", 300) == "bob"
    assert agent_at(ASSIGNMENTS, "d1", 50) is None and agent_at(ASSIGNMENTS, "d1", None) is None
    assert agent_spans(ASSIGNMENTS, {"bob"}) == (Span("d1", 300, None), Span("d2", 0, None))


def test_markers_come_from_events_and_spans_in_time_order() -> None:
    manifest = {"events": [{"t_ms": 2000, "kind": "announcement-end", "detail": {}},
                           {"t_ms": 100, "kind": "announcement-start", "detail": {"prompt": "p.wav"}},
                           {"kind": 7}, "junk", {"t_ms": "x", "kind": "flag"}],
                "pauses": [[5000, 9000]], "masks": [[12000, None], "bad"], "mutes": "bad"}
    got = [(m["t"], m["kind"], m["details"]) for m in markers({"consent": None}, manifest)]
    assert got == [(0.1, "announcement-start", "prompt: p.wav"), (2.0, "announcement-end", ""),
                   (5.0, "pauses", "until 9.0 s"), (12.0, "masks", "to the end"), (None, "flag", "")]
    assert markers({"consent": [{"t_ms": 1, "kind": "opt-out"}]}, None)[0]["label"] == "caller opted out"


def test_a_bulk_selection_is_bounded_and_well_formed() -> None:
    assert selected(["d1/r1", "d2/r2"]) == [("d1", "r1"), ("d2", "r2")]
    assert "select at least one" in selected([])
    assert "at most" in selected(["d/r"] * (MAX_CALLS + 1))
    assert "not a call" in selected(["no-slash"]) and "not a call" in selected(["/r"])


def test_qa_metrics_are_shown_as_a_reviewer_reads_them() -> None:
    from linetap.sync.central.web.pages import qa_summary
    metrics = {"talk_s": {"far": "17.45", "near": "24.36"}, "silence_share": "0.3141", "overtalk_share": "0.0",
               "hold_spans": [["21.73", "33.76"]], "clipping_share": {"far": "0.0", "near": "0.0"}}
    assert qa_summary(metrics) == ["agent talks 58%", "silence 31%", "over-talk 0%", "hold 12 s"]
    assert qa_summary({"talk_s": {"far": "0.0", "near": "0.0"}, "hold_spans": []}) == []  # nothing to show
    assert qa_summary("not a mapping") == []
