"""JSON from outside (platform callbacks, the HTTP API), parsed so that whatever a caller
sends is either a value the rest of Switchboard can store and send on, or a ValueError
saying why not.

Python's parser recurses once per nesting level: a 6 KB body nested 1,000 deep raises
RecursionError, which no caller expects, instead of ValueError. And a value it does
parse may still be one PostgreSQL cannot store or UTF-8 cannot encode: NaN and Infinity
(not JSON, but Python's parser takes them), a number too large for a double (1e999),
the character U+0000, and a lone surrogate
(`"\\ud800"`). Each of those failed later, as a 500 or as a 503 that makes the platform
deliver the message again and again.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

#: The deepest nesting accepted. The platforms' events nest about ten levels at most
#: (a Slack rich-text block inside an event inside the envelope); this leaves room for
#: an integrator's webhook and stays far from the recursion limit (1,000 frames, shared
#: with everything on the stack) that every later json.dumps or loads of the value meets.
MAX_DEPTH = 64

# Characters a JSON string can carry (as \u escapes) that our storage cannot: PostgreSQL
# text and jsonb refuse U+0000, UTF-8 has no encoding for an unpaired surrogate.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_UNSTORABLE_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")


class JSONRefused(ValueError):
    """Well-formed JSON we do not take (too deep, or a value we cannot store)."""


def _refuse_constant(name: str) -> None:
    raise JSONRefused(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    # A number too large for a double (1e999) parses to infinity, which json.dumps then
    # writes as Infinity: PostgreSQL's jsonb refuses it at the INSERT (a 503 and a
    # re-delivery), so it is refused here as the constants are.
    value = float(text)
    if not math.isfinite(value):
        raise JSONRefused(f"the number {text[:40]} is too large")
    return value


# One decoder for every call: json.loads with any option builds a new one each time, which
# cost as much as parsing a small event.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)


def loads(data: bytes | str) -> Any:
    """The value of the JSON text `data` (bytes in UTF-8, as RFC 8259 has it); ValueError
    (the parser's own, UnicodeDecodeError or JSONRefused) with a reason a person can act
    on for anything else."""
    # Strict UTF-8: json.loads would also take UTF-16 and UTF-32, and bytes encoding a lone
    # surrogate ("surrogatepass").
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    try:
        value = _DECODER.decode(text)
    except RecursionError:
        raise JSONRefused(f"the JSON is nested deeper than {MAX_DEPTH} levels") from None
    # Both checks walk the whole value; these cheap looks at the text settle nearly every
    # real payload without it. A value cannot nest deeper than it has brackets, and U+0000
    # and surrogates in bytes can then only arrive as \u escapes (raw, the parser refuses
    # the first and UTF-8 decoding the second); a str may hold them raw.
    deep = text.count("{") + text.count("[") > MAX_DEPTH
    escaped = _UNSTORABLE_ESCAPE.search(text) is not None or (
        not isinstance(data, bytes) and _UNSTORABLE.search(text) is not None
    )
    if deep or escaped:
        _check(value, strings=escaped)
    return value


def _check(value: Any, strings: bool) -> None:
    """Refuse `value` if it nests deeper than MAX_DEPTH or (with `strings`) holds a string
    we cannot store. Level by level, not by recursion (the value may be hundreds of levels
    deep), and each level's items gathered by list operations: about 0.2 s for the worst
    1 MiB body (a third of a million empty arrays), against 2 s one item at a time."""
    level = [value]
    for _ in range(MAX_DEPTH):
        children: list = []
        for item in level:
            if isinstance(item, dict):
                if strings:
                    children.extend(item.keys())
                children.extend(item.values())
            elif isinstance(item, list):
                children.extend(item)
        if strings and any(_UNSTORABLE.search(child) for child in children if isinstance(child, str)):
            _refuse_unstorable()
        level = [child for child in children if isinstance(child, (dict, list))]
        if not level:
            return
    raise JSONRefused(f"the JSON is nested deeper than {MAX_DEPTH} levels")


def _refuse_unstorable() -> None:
    raise JSONRefused(
        "a string holds U+0000 or an unpaired surrogate (\\ud800-\\udfff), which is not text that can be stored"
    )
