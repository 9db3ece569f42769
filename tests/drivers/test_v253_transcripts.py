"""Real modem output the parser used to get wrong, byte for byte, at every chunking.

Each transcript is what a modem of the named family prints with the stored
profile or the caller-ID mode given beside it.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linetap.drivers.events import CallerId, Ring
from linetap.drivers.v253 import Garbage, Result, ShieldedCode, V253Parser, withheld_reason

DLE = b"\x10"


def parse(data: bytes, *, voice: bool = False) -> list[object]:
    parser = V253Parser(voice=voice)
    parser.receive_data(data)
    parser.flush()
    return list(parser.events())


def parse_in_pieces(data: bytes, cuts: list[int], *, voice: bool = False) -> list[object]:
    parser = V253Parser(voice=voice)
    points = sorted({0, len(data), *(cut % (len(data) + 1) for cut in cuts)})
    events: list[object] = []
    for a, b in zip(points, points[1:]):
        parser.receive_data(data[a:b])
        events.extend(parser.events())
    parser.flush()
    return events + list(parser.events())


# -- distinctive ring -----------------------------------------------------------------

# Rockwell (RC56, AT-SDR on in the stored profile): the cadence number after RING.
ROCKWELL_DISTINCTIVE = (b"\r\nRING 2\r\n\r\nDATE = 0321\r\nTIME = 1405\r\nNMBR = 5045551234\r\n"
                        b"NAME = A N OTHER\r\n\r\nRING 2\r\n")
# USR/3Com Sportster/Courier (S101=1): the ring type letter after RING.
USR_DISTINCTIVE = b"\r\nRING B\r\n\r\nDATE = 1015\r\nTIME = 2038\r\nNMBR = 8475550001\r\n\r\nRING B\r\n"


def test_rockwell_distinctive_ring_is_a_ring_with_its_cadence() -> None:
    assert parse(ROCKWELL_DISTINCTIVE) == [
        Ring("2"),
        CallerId(number="5045551234", name="A N OTHER", date="0321", time="1405"),
        Ring("2"),
    ]


def test_usr_distinctive_ring_is_a_ring_with_its_type() -> None:
    assert parse(USR_DISTINCTIVE) == [
        Ring("B"), CallerId(number="8475550001", date="1015", time="2038"), Ring("B")]


@pytest.mark.parametrize("line, cadence", [
    (b"RING", None), (b"RING 1", "1"), (b"RING 4", "4"),  # Rockwell
    (b"RING A", "A"), (b"RING C", "C"), (b"RING D", "D"), (b"RING U", "U"),  # USR/3Com, Hayes S101
    (b"ring b", "B"),
])
def test_every_distinctive_ring_form(line: bytes, cadence: str | None) -> None:
    assert parse(b"\r\n" + line + b"\r\n") == [Ring(cadence)]


@pytest.mark.parametrize("line", [b"RINGING", b"RING BACK", b"RING 123"])
def test_longer_words_after_ring_are_not_rings(line: bytes) -> None:
    assert not any(isinstance(event, Ring) for event in parse(line + b"\r\n"))


# -- 8-bit names -------------------------------------------------------------------------

# Conexant/CX93001 (AT+VCID=1) on a Finnish line: the exchange sends the name in
# Latin-1 and the modem passes the bytes on as they came.
CONEXANT_LATIN1 = b"\r\nRING\r\n\r\nDATE = 0612\r\nTIME = 0915\r\nNMBR = 0401234567\r\nNAME = M\xe4kinen\r\n\r\nRING\r\n"
# The same modem behind a VoIP gateway that sends UTF-8, name before number.
CONEXANT_UTF8_NAME_FIRST = (b"\r\nRING\r\n\r\nDATE = 0612\r\nTIME = 0916\r\nNAME = J\xc3\xa4rvinen\r\n"
                            b"NMBR = 0407654321\r\n\r\nRING\r\n")


def test_latin1_name_keeps_the_block_whole() -> None:
    assert parse(CONEXANT_LATIN1) == [
        Ring(), CallerId(number="0401234567", name="Mäkinen", date="0612", time="0915"), Ring()]


def test_utf8_name_before_the_number_keeps_date_and_time() -> None:
    assert parse(CONEXANT_UTF8_NAME_FIRST) == [
        Ring(), CallerId(number="0407654321", name="Järvinen", date="0612", time="0916"), Ring()]


def test_8bit_bytes_outside_caller_id_are_still_noise() -> None:
    events = parse(b"\xe4\xf6\xe5 RING\r\nOK\r\n")
    assert isinstance(events[0], Garbage) and events[1:] == [Result("OK")]


# -- withheld numbers and names ------------------------------------------------------------

@pytest.mark.parametrize("block, reason", [
    # Rockwell (AT#CID=1), Bellcore GR-30 letters.
    (b"DATE = 0321\r\nTIME = 1405\r\nNMBR = P\r\n", "private"),
    (b"DATE = 0321\r\nTIME = 1405\r\nNMBR = O\r\n", "out-of-area"),
    # Conexant/CX93001 (AT+VCID=1) behind exchanges that spell it out.
    (b"DATE = 0321\r\nTIME = 1405\r\nNMBR = Restricted\r\nNAME = WITHHELD\r\n", "private"),
    (b"DATE = 0321\r\nTIME = 1405\r\nNMBR = Private\r\nNAME = Private\r\n", "private"),
    (b"DATE = 0321\r\nTIME = 1405\r\nNMBR = Anonymous\r\n", "private"),
    (b"DATE = 0321\r\nTIME = 1405\r\nNMBR = PrivDirOff\r\n", "private"),
    (b"DATE = 0321\r\nTIME = 1405\r\nNMBR = Out of area\r\nNAME = O\r\n", "out-of-area"),
    (b"DATE = 0321\r\nTIME = 1405\r\nNMBR = 0000000000\r\nNAME = NO NAME\r\n", "unavailable"),
    # USR/3Com (AT#CID=1).
    (b"DATE = 0321\r\nTIME = 1405\r\nNMBR = O\r\nNAME = Unavailable\r\n", "out-of-area"),
    (b"DATE = 0321\r\nTIME = 1405\r\nNAME = Unavailable\r\n", "unavailable"),
])
def test_withheld_placeholders_are_a_reason_not_data(block: bytes, reason: str) -> None:
    assert parse(block) == [CallerId(date="0321", time="1405", reason_withheld=reason)]


@pytest.mark.parametrize("value, reason", [
    ("P", "private"), ("p", "private"), ("PRIVATE", "private"), ("Private Number", "private"),
    ("Anonymous", "private"), ("Restricted", "private"), ("WITHHELD", "private"),
    ("PrivDirOff", "private"), ("O", "out-of-area"), ("Out of area", "out-of-area"),
    ("OUT-OF-AREA", "out-of-area"), ("Unavailable", "unavailable"), ("NO NAME", "unavailable"),
    ("0000000000", "unavailable"), ("000-000-0000", "unavailable"),
    ("5551234", None), ("SMITH JOHN", None), ("Mäkinen", None), ("PAUL", None), ("OLAVI", None),
    ("Pä", None), ("Ö", None), ("O'Brien", None),
])
def test_withheld_reason(value: str, reason: str | None) -> None:
    assert withheld_reason(value) == reason


def test_a_number_with_the_name_withheld_keeps_the_number() -> None:
    # Rockwell: a caller with no directory listing.
    assert parse(b"NMBR = 5551234\r\nNAME = NO NAME\r\n") == [
        CallerId(number="5551234", reason_withheld="unavailable")]


# -- blocks with only MESG -----------------------------------------------------------------

def test_caller_id_that_failed_says_so_and_nothing_more() -> None:
    # Intel/Ambient MD566x (AT+VCID=1): line seizure heard, no packet read.
    assert parse(b"\r\nRING\r\n\r\nMESG = CALID_202\r\n\r\nRING\r\n") == [
        Ring(), CallerId(reason_withheld="failed"), Ring()]


def test_an_undecoded_parameter_alone_is_no_caller_id() -> None:
    # Rockwell (AT#CID=1): an MDMF parameter it has no tag for, in hex.
    assert parse(b"\r\nRING\r\n\r\nMESG = 06034242431\r\n\r\nRING\r\n") == [Ring(), Ring()]


@pytest.mark.parametrize("mesg, reason", [("080150", "private"), ("08014F", "out-of-area"),
                                          ("040150", "private"), ("04014F49", "out-of-area")])
def test_an_undecoded_reason_for_absence_is_read(mesg: str, reason: str) -> None:
    # Rockwell (AT#CID=1): MDMF parameters 04/08 (reason for absence) passed on in hex.
    block = b"DATE = 0321\r\nTIME = 1405\r\nMESG = " + mesg.encode() + b"\r\n"
    assert parse(block) == [CallerId(date="0321", time="1405", reason_withheld=reason)]


# -- V.253 complex event framing ------------------------------------------------------------

# Conexant/CX93001 in voice mode (AT+FCLASS=8, AT+VCID=1): caller ID as a V.253
# complex event report between DLE X and DLE ., between the first two rings.
CONEXANT_VOICE_CALL = (DLE + b"R" + DLE + b"X" + b"DATE=0321\r\nTIME=1405\r\nNMBR=5045551234\r\n"
                       b"NAME=A N OTHER\r\n" + DLE + b"." + DLE + b"R")


def test_complex_event_caller_id_is_read_and_nothing_is_garbage() -> None:
    assert parse(CONEXANT_VOICE_CALL, voice=True) == [
        Ring(), CallerId(number="5045551234", name="A N OTHER", date="0321", time="1405"), Ring()]


def test_complex_event_without_a_line_end_before_dle_dot() -> None:
    data = DLE + b"X" + b"NMBR=5045551234\r\nNAME=A N OTHER" + DLE + b"."
    assert parse(data, voice=True) == [CallerId(number="5045551234", name="A N OTHER")]


def test_a_complex_event_that_is_not_caller_id_is_skipped_cleanly() -> None:
    # V.253 DID report (event 1) on a Conexant/CX93001 with +VLS event reporting on.
    events = parse(DLE + b"X" + b"DID=4321\r\n" + DLE + b"." + DLE + b"R", voice=True)
    assert events == [ShieldedCode("X", "complex event report without caller ID, skipped"), Ring()]


def test_a_complex_event_cut_short_by_a_ring_gives_its_caller_id_and_says_so() -> None:
    events = parse(DLE + b"X" + b"NMBR=5045551234\r\n" + b"RING\r\n")
    assert events[0] == CallerId(number="5045551234")
    assert isinstance(events[1], Garbage) and "not closed" in events[1].reason
    assert events[2:] == [Ring()]


def test_a_complex_event_inside_voice_data_does_not_leak_into_the_samples() -> None:
    # Conexant/CX93001 receiving voice (AT+VRX) when a call-waiting caller ID arrives.
    data = b"CONNECT\r\n" + b"\x80\x81" + DLE + b"X" + b"NMBR=5045551234\r\n" + DLE + b"." + b"\x82" + DLE + b"\x03"
    events = parse(data, voice=True)
    assert CallerId(number="5045551234") in events
    assert not any(isinstance(e, Garbage) for e in events)
    assert b"".join(e.data for e in events if hasattr(e, "data")) == b"\x80\x81\x82"


def test_a_stray_dle_dot_outside_a_report_is_reported() -> None:
    assert isinstance(parse(DLE + b".")[0], Garbage)


# -- every transcript, every chunking ----------------------------------------------------------

TRANSCRIPTS = [
    (ROCKWELL_DISTINCTIVE, False), (USR_DISTINCTIVE, False), (CONEXANT_LATIN1, False),
    (CONEXANT_UTF8_NAME_FIRST, False), (CONEXANT_VOICE_CALL, True),
    (b"\r\nRING\r\n\r\nMESG = CALID_202\r\n\r\nRING\r\n", False),
    (b"DATE = 0321\r\nTIME = 1405\r\nNMBR = Restricted\r\nNAME = WITHHELD\r\n\r\nRING\r\n", False),
]


@pytest.mark.parametrize("data, voice", TRANSCRIPTS)
def test_split_at_every_byte_changes_nothing(data: bytes, voice: bool) -> None:
    whole = parse(data, voice=voice)
    assert not any(isinstance(e, Garbage) for e in whole)
    for cut in range(len(data) + 1):
        assert parse_in_pieces(data, [cut], voice=voice) == whole
    assert parse_in_pieces(data, list(range(len(data))), voice=voice) == whole


@settings(deadline=None)
@given(st.sampled_from(TRANSCRIPTS), st.lists(st.integers(min_value=0), max_size=20))
def test_random_chunking_changes_nothing(transcript: tuple[bytes, bool], cuts: list[int]) -> None:
    data, voice = transcript
    assert parse_in_pieces(data, cuts, voice=voice) == parse(data, voice=voice)
