"""The platforms' published test vectors, kept in the repository beside this module
(vectors/vectors.json; vectors/README.md names each one's source). A missing or
damaged file fails the tests that need it loudly instead of skipping them: a skipped
vector test proves nothing."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

VECTORS_PATH = Path(__file__).resolve().parent / "vectors" / "vectors.json"


@cache
def _all() -> dict[str, dict]:
    return {entry["id"]: entry for entry in json.loads(VECTORS_PATH.read_text(encoding="utf-8"))}


def vector(vector_id: str) -> dict:
    return _all()[vector_id]


def vector_ids(platforms: set[str], kind: str) -> list[str]:
    return sorted(i for i, entry in _all().items() if entry["platform"] in platforms and entry["kind"] == kind)
