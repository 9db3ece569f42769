"""The sans-IO V.253 parser, one event kind and variant at a time."""

from __future__ import annotations

import pytest

from linetap.drivers.events import CallerId, DtmfDigit, HookChanged, LineTone, Ring
from linetap.drivers.v253 import (
    MAX_LINE,
    Garbage,
    Response,
    Result,
    ShieldedCode,
    V253Parser,
    V253ProtocolError,
    VoiceData,
    VoiceDataEnd,
)
from linetap.firmware.errors import ProtocolError

DLE = b"\x10"
ETX = b"\x03"


def parse(data: bytes, *, voice: bool = False, flush: bool = True) -> list[object]:
    parser = V253Parser(voice=voice)
    parser.receive_data(data)
    if flush:
        parser.flush()
    return list(parser.events())


# -- lines -----------------------------------------------------------------------


@pytest.mark.parametrize("line, code", [
    (b"OK", "OK"), (b"ERROR", "ERROR"), (b"NO CARRIER", "NO CARRIER"), (b"CONNECT", "CONNECT"),
    (b"VCON", "VCON"), (b"BUSY", "BUSY"), (b"NO DIALTONE", "NO DIALTONE"),
    (b"NO DIAL TONE", "NO DIALTONE"), (b"NO ANSWER", "NO ANSWER"), (b"ok", "OK"),
])
def test_result_codes(line: bytes, code: str) -> None:
    assert parse(b"\r\n" + line + b"\r\n") == [Result(code)]


def test_connect_keeps_its_rate_as_detail() -> None:
    assert parse(b"\r\nCONNECT 33600\r\n") == [Result("CONNECT", "33600")]


def test_information_text_is_a_response() -> None:
    assert parse(b"\r\n56000\r\n\r\nCX93001-EIS_V0.2002-V92\r\n\r\nOK\r\n") == [
        Response("56000"), Response("CX93001-EIS_V0.2002-V92"), Result("OK")]


def test_a_word_that_starts_like_a_result_is_text() -> None:
    assert parse(b"CONNECTED TO LINE\r\nOKAY\r\n") == [Response("CONNECTED TO LINE"), Response("OKAY")]


def test_ring_line() -> None:
    assert parse(b"\r\nRING\r\n\r\nRING\r\n") == [Ring(), Ring()]


@pytest.mark.parametrize("ending", [b"\r", b"\n", b"\r\n", b"\n\r"])
def test_every_line_ending_frames_lines(ending: bytes) -> None:
    assert parse(ending.join([b"RING", b"OK", b"ATI", b""])) == [Ring(), Result("OK"), Response("ATI")]


def test_next_event_is_none_until_a_line_is_complete() -> None:
    parser = V253Parser()
    parser.receive_data(b"RI")
    assert parser.next_event() is None
    parser.receive_data(b"NG\r")
    assert parser.next_event() == Ring()
    assert parser.next_event() is None


def test_overlong_line_is_dropped_and_reported_and_the_next_line_survives() -> None:
    events = parse(b"x" * (MAX_LINE + 100) + b"\r\nRING\r\n")
    assert len(events) == 2
    assert isinstance(events[0], Garbage) and "longer than" in events[0].reason
    assert len(events[0].data) <= 64
    assert events[1] == Ring()


def test_a_line_of_exactly_the_limit_is_kept() -> None:
    assert parse(b"A" * MAX_LINE + b"\r\n") == [Response("A" * MAX_LINE)]


def test_line_with_binary_bytes_is_garbage() -> None:
    events = parse(b"\x00\xffR\x80NG\r\nOK\r\n")
    assert isinstance(events[0], Garbage) and "non-text" in events[0].reason
    assert events[1:] == [Result("OK")]


def test_end_of_stream_reports_an_unfinished_line_and_starts_afresh() -> None:
    parser = V253Parser()
    parser.receive_data(b"RIN")
    parser.receive_data(b"")
    events = list(parser.events())
    assert len(events) == 1 and isinstance(events[0], Garbage) and "inside a line" in events[0].reason
    parser.receive_data(b"G\r\nRING\r\n")
    assert list(parser.events()) == [Response("G"), Ring()]


# -- caller ID --------------------------------------------------------------------


STANDARD_BLOCK = b"\r\nDATE = 1129\r\nTIME = 0930\r\nNMBR = 5551234\r\nNAME = SMITH JOHN\r\n\r\n"
STANDARD_ID = CallerId(number="5551234", name="SMITH JOHN", date="1129", time="0930")


def test_caller_id_block_completed_by_the_next_ring() -> None:
    assert parse(b"\r\nRING\r\n" + STANDARD_BLOCK + b"\r\nRING\r\n", flush=False) == [
        Ring(), STANDARD_ID, Ring()]


def test_caller_id_block_waits_for_its_end() -> None:
    parser = V253Parser()
    parser.receive_data(STANDARD_BLOCK)
    assert parser.next_event() is None
    parser.flush()
    assert list(parser.events()) == [STANDARD_ID]


def test_caller_id_block_completed_by_a_result_line() -> None:
    assert parse(STANDARD_BLOCK + b"OK\r\n", flush=False) == [STANDARD_ID, Result("OK")]


def test_caller_id_block_completed_by_a_dle_event_keeps_order() -> None:
    assert parse(STANDARD_BLOCK + DLE + b"H", flush=False) == [
        STANDARD_ID, HookChanged(off_hook=True, source="modem")]


def test_caller_id_block_completed_at_end_of_stream() -> None:
    parser = V253Parser()
    parser.receive_data(STANDARD_BLOCK)
    parser.receive_data(b"")
    assert list(parser.events()) == [STANDARD_ID]


@pytest.mark.parametrize("block, expected", [
    (b"DATE=1129\nTIME=0930\nNMBR=5551234\nNAME=SMITH JOHN\n", STANDARD_ID),
    (b"DATE: 1129\r\nTIME: 0930\r\nNUMBER: 5551234\r\nCALLER NAME: SMITH JOHN\r\n", STANDARD_ID),
    (b"DATE =1129\r\nTIME= 0930\r\nCALLER NUMBER = 5551234\r\nNAME   =   SMITH JOHN  \r\n", STANDARD_ID),
    (b"DATE = 1129\r\nTIME = 0930\r\nDDN_NMBR = 5551234\r\n",
     CallerId(number="5551234", date="1129", time="0930")),
    (b"NMBR = 5551234\r\nDDN_NMBR = 15551234\r\n", CallerId(number="5551234")),
    (b"date = 1129\r\nnmbr = 5551234\r\nname = Smith John\r\n",
     CallerId(number="5551234", name="Smith John", date="1129")),
    (b"NMBR = 5551234\r\nMESG = 060342424331\r\n", CallerId(number="5551234")),
    (b"NMBR = \r\nNAME = SMITH JOHN\r\n", CallerId(name="SMITH JOHN")),
])
def test_caller_id_variants(block: bytes, expected: CallerId) -> None:
    assert parse(block) == [expected]


@pytest.mark.parametrize("block, expected", [
    (b"DATE = 1129\r\nTIME = 0930\r\nNMBR = P\r\nNAME = P\r\n",
     CallerId(date="1129", time="0930", reason_withheld="private")),
    (b"DATE = 1129\r\nTIME = 0930\r\nNMBR = O\r\nNAME = O\r\n",
     CallerId(date="1129", time="0930", reason_withheld="out-of-area")),
    (b"NMBR = 5551234\r\nNAME = O\r\n", CallerId(number="5551234", reason_withheld="out-of-area")),
    (b"NMBR = PRIVATE\r\n", CallerId(reason_withheld="private")),
    (b"NMBR = OUT OF AREA\r\nNAME = SMITH JOHN\r\n",
     CallerId(name="SMITH JOHN", reason_withheld="out-of-area")),
])
def test_withheld_number_or_name(block: bytes, expected: CallerId) -> None:
    assert parse(block) == [expected]


def test_back_to_back_blocks_split_where_a_tag_repeats() -> None:
    assert parse(b"NMBR = 5551234\r\nNAME = A\r\nNMBR = 5559876\r\nNAME = B\r\n") == [
        CallerId(number="5551234", name="A"), CallerId(number="5559876", name="B")]


def test_unknown_tag_is_plain_text() -> None:
    assert parse(b"MANUFACTURER: ACME\r\n") == [Response("MANUFACTURER: ACME")]


# -- DLE-shielded events ------------------------------------------------------------


@pytest.mark.parametrize("code, event", [
    (b"H", HookChanged(off_hook=True, source="modem")),
    (b"h", HookChanged(off_hook=False, source="modem")),
    (b"P", HookChanged(off_hook=True, source="modem")),
    (b"p", HookChanged(off_hook=False, source="modem")),
    (b"R", Ring()),
    (b"b", LineTone("busy")),
    (b"d", LineTone("dial-tone")),
    (b"s", LineTone("silence")),
    (b"q", LineTone("quiet")),
    (b"r", LineTone("ringback")),
    (b"c", LineTone("fax")),
    (b"e", LineTone("data")),
    (b"a", LineTone("data")),
    (b"f", LineTone("data")),
    (b"l", ShieldedCode("l", "loop current interruption")),
    (b"o", ShieldedCode("o", "receive buffer overrun")),
])
def test_shielded_event_codes(code: bytes, event: object) -> None:
    assert parse(DLE + code) == [event]


@pytest.mark.parametrize("digit", list("0123456789*#ABCD"))
def test_dtmf_digits(digit: str) -> None:
    assert parse(DLE + digit.encode()) == [DtmfDigit(digit)]


def test_shielded_dtmf_reports_one_digit_per_press() -> None:
    press_5 = DLE + b"/" + (DLE + b"5") * 4 + DLE + b"~"
    press_7 = DLE + b"/" + (DLE + b"7") * 3 + DLE + b"~"
    assert parse(press_5 + press_5 + press_7) == [DtmfDigit("5"), DtmfDigit("5"), DtmfDigit("7")]


def test_a_stray_shield_start_does_not_swallow_other_digits() -> None:
    assert parse(DLE + b"/" + DLE + b"1" + DLE + b"2" + DLE + b"3") == [
        DtmfDigit("1"), DtmfDigit("2"), DtmfDigit("3")]


def test_dle_events_between_text_lines_do_not_disturb_them() -> None:
    assert parse(b"RI" + DLE + b"H" + b"NG\r\n") == [HookChanged(off_hook=True, source="modem"), Ring()]


def test_unknown_dle_code_is_reported_and_skipped() -> None:
    events = parse(DLE + b"z" + b"RING\r\n")
    assert events[0] == Garbage(DLE + b"z", "unknown DLE code 0x7a")
    assert events[1:] == [Ring()]


def test_dle_dle_is_a_literal_0x10_in_a_line() -> None:
    events = parse(b"AB" + DLE + DLE + b"C\r\n")
    assert len(events) == 1 and isinstance(events[0], Garbage)
    assert events[0].data == b"AB\x10C"


def test_end_of_stream_after_a_lone_dle() -> None:
    parser = V253Parser()
    parser.receive_data(b"OK\r\n" + DLE)
    parser.receive_data(b"")
    events = list(parser.events())
    assert events[0] == Result("OK")
    assert isinstance(events[1], Garbage) and "after a DLE" in events[1].reason


# -- voice data ---------------------------------------------------------------------


def test_voice_data_runs_from_connect_to_dle_etx() -> None:
    samples = bytes([0x7F, 0x10, 0x80, 0x10, 0x10, 0x00])
    shielded = samples.replace(b"\x10", b"\x10\x10")
    events = parse(b"\r\nCONNECT\r\n" + shielded + DLE + ETX + b"\r\nOK\r\n", voice=True)
    assert events == [Result("CONNECT"), VoiceData(samples), VoiceDataEnd(), Result("OK")]


def test_events_inside_voice_data_come_in_order() -> None:
    events = parse(b"CONNECT\r\nab" + DLE + b"5" + b"cd" + DLE + b"h" + DLE + ETX, voice=True)
    assert events == [Result("CONNECT"), VoiceData(b"ab"), DtmfDigit("5"), VoiceData(b"cd"),
                      HookChanged(off_hook=False, source="modem"), VoiceDataEnd()]


def test_after_a_connect_not_ended_by_cr_lf_every_byte_is_data() -> None:
    assert parse(b"CONNECT\n\r\n" + DLE + ETX, voice=True) == [
        Result("CONNECT"), VoiceData(b"\r\n"), VoiceDataEnd()]


def test_dle_sub_stands_for_two_dle_data_bytes() -> None:
    events = parse(b"CONNECT\r\n" + DLE + b"\x1a" + DLE + ETX, voice=True)
    assert events == [Result("CONNECT"), VoiceData(b"\x10\x10"), VoiceDataEnd()]


def test_connect_outside_voice_mode_stays_in_lines() -> None:
    assert parse(b"CONNECT\r\nRING\r\n") == [Result("CONNECT"), Ring()]


def test_end_of_stream_inside_voice_data_is_reported() -> None:
    parser = V253Parser(voice=True)
    parser.receive_data(b"CONNECT\r\nxyz")
    parser.receive_data(b"")
    events = list(parser.events())
    assert events[:2] == [Result("CONNECT"), VoiceData(b"xyz")]
    assert isinstance(events[2], Garbage) and "voice data" in events[2].reason
    parser.receive_data(b"RING\r\n")
    assert list(parser.events()) == [Ring()]


def test_protocol_error_is_one_of_the_project_errors() -> None:
    assert issubclass(V253ProtocolError, ProtocolError)
