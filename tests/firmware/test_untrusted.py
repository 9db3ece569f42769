"""Bounded JSON and ASCII integers: every hostile shape is one clear Untrusted error."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from linetap.firmware.untrusted import MAX_SAFE_INT, Untrusted, ascii_int, loads


def test_plain_document_parses() -> None:
    assert loads(b'{"a":[1,2,{"b":"[[[["}],"c":-3}', what="doc", max_bytes=100) == {
        "a": [1, 2, {"b": "[[[["}], "c": -3}


@pytest.mark.parametrize("data, words", [
    (b"[" * 50_000, "nests deeper than 32"),
    (b"1" * 100_000, "at most 65536"),
    (b"[" + b"9" * 900 + b"]", "outside"),
    (b'{"seq":18446744073709551616}', "18446744073709551616"),
    (b'{"wall_ms":100000000000000000000}', "outside"),
    (b'{"a":1,"a":2}', "repeats the key 'a'"),
    (b'{"a":1.5}', "not an integer"),
    (b'{"a":NaN}', "not an integer"),
    (b'{"a":"\xff"}', "not UTF-8"),
    (b'{"a":', "not JSON"),
])
def test_hostile_documents_are_refused_by_name(data: bytes, words: str) -> None:
    with pytest.raises(Untrusted, match=words.replace("[", r"\[").replace(".", r"\.")):
        loads(data, what="doc", max_bytes=65536)


def test_depth_counts_only_structure_outside_strings() -> None:
    deep_string = '"' + "[" * 100 + '"'
    assert loads(deep_string, what="doc", max_bytes=1000) == "[" * 100
    assert loads('"\\"[[["', what="doc", max_bytes=100) == '"[[['
    with pytest.raises(Untrusted):
        loads("[" * 4 + "]" * 4, what="doc", max_bytes=100, max_depth=3)
    assert loads("[" * 3 + "]" * 3, what="doc", max_bytes=100, max_depth=3) == [[[]]]


def test_safe_integer_bounds_are_inclusive() -> None:
    assert loads(str(MAX_SAFE_INT), what="n", max_bytes=100) == MAX_SAFE_INT
    assert loads(str(-MAX_SAFE_INT), what="n", max_bytes=100) == -MAX_SAFE_INT
    with pytest.raises(Untrusted):
        loads(str(MAX_SAFE_INT + 1), what="n", max_bytes=100)


def test_floats_only_when_asked() -> None:
    assert loads("1.5", what="n", max_bytes=10, allow_floats=True) == 1.5


@pytest.mark.parametrize("text, value", [
    ("0", 0), ("7", 7), ("123456", 123456), ("²", None), ("٣", None), ("3²", None), ("+1", None),
    (" 1", None), ("1 ", None), ("1_0", None), ("01", None), ("", None), ("-1", None), ("1\n", None),
    (None, None), (3, None), ("9" * 40, None),
])
def test_ascii_int_takes_plain_decimal_only(text: object, value: int | None) -> None:
    assert ascii_int(text) == value


def test_ascii_int_range_and_sign() -> None:
    assert ascii_int("5", hi=4) is None
    assert ascii_int("4", hi=4) == 4
    assert ascii_int("-3", lo=-5, signed=True) == -3
    assert ascii_int("-0", lo=-5, signed=True) == 0
    assert ascii_int("-6", lo=-5, signed=True) is None


@given(st.binary(max_size=300))
def test_any_bytes_parse_or_raise_untrusted(data: bytes) -> None:
    try:
        loads(data, what="doc", max_bytes=200, max_depth=4)
    except Untrusted:
        pass


@given(st.text(max_size=30))
def test_ascii_int_agrees_with_int_on_ascii_digits(text: str) -> None:
    value = ascii_int(text)
    if value is not None:
        assert text.isascii() and text.isdigit() and int(text) == value and str(value) == text
