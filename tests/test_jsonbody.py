"""config.jsonbody: JSON from outside is a value we can store, or a ValueError saying why."""

from __future__ import annotations

import pytest

from config import jsonbody
from tests.fuzz.hostile import nested_json


@pytest.mark.parametrize("kind", ["object", "array"])
def test_nesting_is_accepted_to_the_limit_and_refused_past_it_however_deep(kind):
    assert jsonbody.loads(nested_json(jsonbody.MAX_DEPTH, kind))
    for depth in (jsonbody.MAX_DEPTH + 1, 1000, 200_000):
        with pytest.raises(jsonbody.JSONRefused, match="nested deeper than 64 levels"):
            jsonbody.loads(nested_json(depth, kind))


def test_many_shallow_containers_are_not_taken_for_depth():
    assert len(jsonbody.loads(b"[" + b",".join([b'{"a":[1]}'] * 500) + b"]")) == 500


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[NaN]", "NaN is not a JSON value"),
        (b'{"a": -Infinity}', "-Infinity is not a JSON value"),
        (b'{"chatbotCorpId": 1e999}', "too large"),
        (b"[-1.5E400]", "too large"),
        (b'{"text": "a\\u0000b"}', "U\\+0000"),
        (b'{"\\ud800": 1}', "unpaired surrogate"),
        (b'["\\udfff"]', "unpaired surrogate"),
        (b'"he\xed\xa0\x80llo"', "can't decode"),  # a surrogate as UTF-8 bytes
        ('{"a": 1}'.encode("utf-16"), "can't decode"),
        (b"1" * 5000, "4300 digits"),
        (b'{"a": 1', "Expecting"),
    ],
)
def test_what_cannot_be_stored_or_is_not_json_in_utf8_is_refused_with_the_reason(body, reason):
    with pytest.raises(ValueError, match=reason):
        jsonbody.loads(body)


def test_a_str_holding_a_lone_surrogate_raw_is_refused():
    with pytest.raises(jsonbody.JSONRefused, match="unpaired surrogate"):
        jsonbody.loads('{"text": "a\ud800b"}')


def test_escapes_that_are_text_are_kept():
    assert jsonbody.loads(b'["\\ud83d\\ude00", "\\\\u0000", "\\u4e2d"]') == ["\U0001f600", "\\u0000", "\u4e2d"]
