"""Hostile request bodies for the property tests and the tests against gunicorn: nested
deeper than any parser expects, as large as the cap allows (and larger), cut short, and
mis-encoded, in JSON and in XML, whole or planted inside a real message."""

from __future__ import annotations

import json
from typing import Literal

from django.conf import settings
from hypothesis import strategies as st

Format = Literal["json", "xml"]


def nested_json(depth: int, kind: str = "object") -> bytes:
    """{"a":{"a":…1…}} (or [[…1…]]) `depth` levels deep."""
    if kind == "object":
        return b'{"a":' * depth + b"1" + b"}" * depth
    return b"[" * depth + b"1" + b"]" * depth


def nested_xml(depth: int) -> bytes:
    return b"<xml>" + b"<a>" * depth + b"1" + b"</a>" * depth + b"</xml>"


def nested(format: Format, depth: int, kind: str = "object") -> bytes:
    return nested_json(depth, kind) if format == "json" else nested_xml(depth)


def huge(format: Format, size: int) -> bytes:
    """A well-formed document of about `size` bytes: one long string."""
    if format == "json":
        return b'{"text":"' + b"x" * max(size - 11, 0) + b'"}'
    return b"<xml><Content>" + b"x" * max(size - 30, 0) + b"</Content></xml>"


# Values to plant in a real message, written as JSON text: what Python's parser takes but
# JSON does not, what PostgreSQL cannot store, what UTF-8 cannot encode, numbers that do
# not fit, and structures too deep to walk by recursion.
JSON_VALUES = [
    "NaN",
    "Infinity",
    "-Infinity",
    '"\\u0000"',
    '"a\\u0000b"',
    '"\\ud800"',
    '"\\udfff x"',
    '"\\ud83d\\ude00"',
    "1" * 5000,
    "1e999",
    "-0",
    '""',
    "null",
    "[]",
    "{}",
    '"' + "\u4e2d" * 1000 + '"',
]
MIS_ENCODINGS = ["utf-16", "utf-32", "latin-1-text", "bom", "invalid-bytes", "cesu-surrogate", "nul-byte"]


def mis_encode(payload: bytes, how: str) -> bytes:
    """`payload` (UTF-8) encoded some way the platform would never send."""
    text = payload.decode("utf-8")
    if how in ("utf-16", "utf-32"):
        return text.encode(how)
    if how == "latin-1-text":
        return text.replace("hello", "h\u00e9llo").encode("latin-1", "replace")
    if how == "bom":
        return b"\xef\xbb\xbf" + payload
    if how == "invalid-bytes":
        return payload.replace(b"hello", b"he\xff\xfello")
    if how == "cesu-surrogate":  # a surrogate written as UTF-8 bytes, which UTF-8 forbids
        return payload.replace(b"hello", b"he\xed\xa0\x80llo")
    return payload.replace(b"hello", b"he\x00llo")


def plant_json(payload: bytes, position: int, value: str) -> bytes:
    """The JSON `payload` with one of its string or number values, chosen by position,
    replaced by the JSON text `value`."""
    document = json.loads(payload)
    slots: list[tuple[dict | list, str | int]] = []
    pending: list[dict | list] = [document]
    while pending:
        container = pending.pop()
        items = container.items() if isinstance(container, dict) else enumerate(container)
        for key, item in items:
            if isinstance(item, (dict, list)):
                pending.append(item)
            else:
                slots.append((container, key))
    marker = "\u2603planted\u2603"
    container, key = slots[position % len(slots)]
    container[key] = marker
    return (
        json.dumps(document, ensure_ascii=False)
        .encode("utf-8")
        .replace(json.dumps(marker, ensure_ascii=False).encode("utf-8"), value.encode("utf-8"))
    )


def plant_xml(payload: bytes, value: bytes) -> bytes:
    """The XML `payload` with its Content (or first text) replaced by raw markup `value`."""
    start, end = payload.find(b"<Content>"), payload.find(b"</Content>")
    if start < 0 or end < 0:
        return payload + value
    return payload[: start + len(b"<Content>")] + value + payload[end:]


XML_VALUES = [
    b"<a>" * 5000 + b"</a>" * 5000,
    b"<![CDATA[" + b"\x00" + b"]]>",
    b"&#0;",
    b"&#xD800;",
    b"&lt;&amp;",
    b"<a><b></a>",
    b"\xe4\xb8\xad" * 5000,
]


def depths() -> st.SearchStrategy[int]:
    """Around the depth limit, around Python's recursion limit, and far past both."""
    return st.one_of(st.integers(1, 80), st.integers(900, 1100), st.integers(1100, 60_000))


def cap() -> int:
    return settings.CALLBACK_MAX_BODY_BYTES


@st.composite
def hostile_payloads(draw, format: Format, valid: bytes) -> bytes:
    """One hostile payload in `format`, some made from `valid` (a real message's payload)."""
    kind = draw(st.sampled_from(["nested", "huge", "truncated", "mis-encoded", "planted"]))
    if kind == "nested":
        return nested(format, draw(depths()), draw(st.sampled_from(["object", "array"])))
    if kind == "huge":
        return huge(format, draw(st.sampled_from([cap() // 2, cap() - 1, cap(), cap() + 1, 2 * cap()])))
    if kind == "truncated":
        return valid[: draw(st.integers(0, max(len(valid) - 1, 0)))]
    if kind == "mis-encoded":
        return mis_encode(valid, draw(st.sampled_from(MIS_ENCODINGS)))
    if format == "json":
        value = draw(st.sampled_from(JSON_VALUES) | depths().map(lambda depth: nested_json(depth).decode()))
        return plant_json(valid, draw(st.integers(0, 10**6)), value)
    return plant_xml(valid, draw(st.sampled_from(XML_VALUES)))
