"""Properties of the V.253 parser: chunking never matters, garbage never costs a valid event."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from linetap.drivers.events import CallerId, DtmfDigit, HookChanged, LineTone, Ring
from linetap.drivers.v253 import Response, Result, ShieldedCode, V253Parser, VoiceData, VoiceDataEnd, withheld_reason

DLE = b"\x10"
ENDINGS = [b"\r", b"\n", b"\r\n", b"\n\r"]
# What modems print in place of a withheld number (Rockwell, Conexant/CX93001, USR/3Com), and the reason.
WITHHELD_NUMBERS = [("P", "private"), ("O", "out-of-area"), ("Restricted", "private"),
                    ("Anonymous", "private"), ("PRIVATE", "private"), ("Out of area", "out-of-area"),
                    ("0000000000", "unavailable"), ("Unavailable", "unavailable")]
# Letters a Latin-1 or UTF-8 name brings (Finnish, Swedish, German, Spanish): all
# at or above 0xC0, so a Latin-1 name that holds one is never valid UTF-8.
EIGHT_BIT_LETTERS = "ÄÖÅäöåÉéÜüßÑñ"

Unit = tuple[bytes, list[object]]
# Timing belongs to benchmarks; a loaded CI machine must not fail a property.
NO_DEADLINE = settings(deadline=None)


def _line(text: str, ending: bytes) -> bytes:
    return text.encode("ascii") + ending


results = st.builds(
    lambda code, ending: (_line(code, ending), [Result(code)]),
    st.sampled_from(["OK", "ERROR", "NO CARRIER", "VCON", "BUSY", "NO DIALTONE", "NO ANSWER"]),
    st.sampled_from(ENDINGS))
rings = st.builds(lambda cadence, ending: (_line(f"RING {cadence}" if cadence else "RING", ending),
                                           [Ring(cadence)]),
                  st.sampled_from([None, "1", "2", "3", "A", "B", "C", "D", "U"]), st.sampled_from(ENDINGS))
texts = st.builds(
    lambda body, ending: (_line(f"INFO-{body}", ending), [Response(f"INFO-{body}")]),
    st.text(alphabet="ABCXYZ0123456789-.", min_size=1, max_size=20), st.sampled_from(ENDINGS))
shielded = st.sampled_from([
    (DLE + b"H", [HookChanged(off_hook=True, source="modem")]),
    (DLE + b"h", [HookChanged(off_hook=False, source="modem")]),
    (DLE + b"R", [Ring()]),
    (DLE + b"b", [LineTone("busy")]),
    (DLE + b"d", [LineTone("dial-tone")]),
    (DLE + b"s", [LineTone("silence")]),
    (DLE + b"q", [LineTone("quiet")]),
    (DLE + b"r", [LineTone("ringback")]),
    (DLE + b"c", [LineTone("fax")]),
    *[(DLE + digit.encode(), [DtmfDigit(digit)]) for digit in "0123456789*#ABCD"],
])
digits = st.text(alphabet="0123456789", min_size=1, max_size=12).filter(lambda number: number.strip("0"))
names = st.builds(lambda first, rest: (first + rest).rstrip(),
                  st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZ" + EIGHT_BIT_LETTERS),
                  st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ ,'." + EIGHT_BIT_LETTERS, max_size=14)
                  ).filter(lambda name: withheld_reason(name) is None)
mmdd = st.builds("{:02d}{:02d}".format, st.integers(1, 12), st.integers(1, 31))
hhmm = st.builds("{:02d}{:02d}".format, st.integers(0, 23), st.integers(0, 59))


@st.composite
def caller_ids(draw: st.DrawFn) -> Unit:
    """A caller-ID block in a random spelling and encoding, maybe framed as a V.253 complex event, then a RING."""
    placeholder = draw(st.none() | st.sampled_from(WITHHELD_NUMBERS))
    number = placeholder[0] if placeholder else draw(st.none() | digits)
    withheld = placeholder[1] if placeholder else None
    name = draw(st.none() | names)
    date = draw(st.none() | mmdd)
    time = draw(st.none() | hhmm)
    tags = {"DATE": date, "TIME": time,
            draw(st.sampled_from(["NMBR", "NUMBER", "DDN_NMBR"])): number,
            draw(st.sampled_from(["NAME", "CALLER NAME"])): name}
    ending = draw(st.sampled_from(ENDINGS))
    separator = draw(st.sampled_from([" = ", "=", " =", ": ", ":"]))
    encoding = draw(st.sampled_from(["utf-8", "latin-1"]))
    lines = b"".join(f"{tag}{separator}{value}".encode(encoding) + ending
                     for tag, value in tags.items() if value is not None)
    expected = CallerId(number=None if withheld else number, name=name, date=date, time=time,
                        reason_withheld=withheld)
    events: list[object] = [expected] if lines else []
    if draw(st.booleans()):
        lines = DLE + b"X" + lines + DLE + b"."
        if not events:
            events = [ShieldedCode("X", "complex event report without caller ID, skipped")]
    return lines + _line("RING", ending), [*events, Ring()]


units = st.one_of(results, rings, texts, shielded, caller_ids())
streams = st.lists(units, max_size=12)


def feed(chunks: list[bytes], *, voice: bool = False) -> list[object]:
    parser = V253Parser(voice=voice)
    events: list[object] = []
    for chunk in chunks:
        parser.receive_data(chunk)
        events.extend(parser.events())
    parser.flush()
    events.extend(parser.events())
    return events


def join(stream: list[Unit]) -> tuple[bytes, list[object]]:
    return b"".join(data for data, _ in stream), [event for _, events in stream for event in events]


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(cut % (len(data) + 1) for cut in cuts)})
    return [data[a:b] for a, b in zip(points, points[1:])]


def merge_voice(events: list[object]) -> list[object]:
    """Voice data comes in pieces as it arrives; only the bytes and their place count."""
    merged: list[object] = []
    for event in events:
        if isinstance(event, VoiceData) and merged and isinstance(merged[-1], VoiceData):
            merged[-1] = VoiceData(merged[-1].data + event.data)
        else:
            merged.append(event)
    return merged


def is_subsequence(wanted: list[object], got: list[object]) -> bool:
    remaining = iter(got)
    return all(any(event == candidate for candidate in remaining) for event in wanted)


@NO_DEADLINE
@given(streams)
def test_a_valid_stream_yields_exactly_its_events(stream: list[Unit]) -> None:
    data, expected = join(stream)
    assert feed([data]) == expected


@settings(max_examples=60, deadline=None)
@given(streams)
def test_split_at_every_byte_boundary_changes_nothing(stream: list[Unit]) -> None:
    data, expected = join(stream)
    for cut in range(len(data) + 1):
        assert feed([data[:cut], data[cut:]]) == expected
    assert feed([data[i:i + 1] for i in range(len(data))]) == expected


@NO_DEADLINE
@given(streams, st.lists(st.integers(min_value=0), max_size=20))
def test_random_chunking_changes_nothing(stream: list[Unit], cuts: list[int]) -> None:
    data, expected = join(stream)
    assert feed(chunked(data, cuts)) == expected


@NO_DEADLINE
@given(st.binary(max_size=2048), st.lists(st.integers(min_value=0), max_size=10), st.booleans())
def test_random_bytes_never_raise(data: bytes, cuts: list[int], voice: bool) -> None:
    parser = V253Parser(voice=voice)
    for chunk in chunked(data, cuts):
        parser.receive_data(chunk)
        list(parser.events())
    parser.flush()
    parser.receive_data(b"")
    list(parser.events())


# Line noise as it reaches the host: no DLE (a stray DLE turns the next byte
# into an event code) and no "=" or ":" (which could pass for a caller-ID tag
# and join a block); each burst ends with a line end, as noise on a modem
# line that prints lines does.
noise = st.binary(max_size=700).map(
    lambda b: b.replace(DLE, b"").replace(b"=", b"").replace(b":", b"") + b"\r\n")


@NO_DEADLINE
@given(st.lists(st.tuples(noise, units), max_size=10), st.lists(st.integers(min_value=0), max_size=10))
def test_garbage_between_lines_loses_no_valid_event(pairs: list[tuple[bytes, Unit]], cuts: list[int]) -> None:
    data = b"".join(garbage + unit_data for garbage, (unit_data, _) in pairs)
    expected = [event for _, (_, events) in pairs for event in events]
    assert is_subsequence(expected, feed(chunked(data, cuts)))


@NO_DEADLINE
@given(st.binary(max_size=600), st.lists(st.integers(min_value=0), max_size=20))
def test_voice_data_survives_any_chunking(samples: bytes, cuts: list[int]) -> None:
    data = b"CONNECT\r\n" + samples.replace(DLE, DLE + DLE) + DLE + b"\x03" + b"OK\r\n"
    expected = [Result("CONNECT"), *([VoiceData(samples)] if samples else []), VoiceDataEnd(), Result("OK")]
    assert merge_voice(feed(chunked(data, cuts), voice=True)) == expected
