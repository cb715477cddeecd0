"""The published test vectors (../shared/vectors/vectors.json next to the repository,
or the file SWITCHBOARD_VECTORS names). A missing file fails the tests that need it
loudly instead of skipping them: a skipped vector test proves nothing."""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path

DEFAULT_PATH = Path(__file__).resolve().parents[3].parent / "shared" / "vectors" / "vectors.json"


@cache
def _all() -> dict[str, dict]:
    path = Path(os.environ.get("SWITCHBOARD_VECTORS", DEFAULT_PATH))
    if not path.is_file():
        raise FileNotFoundError(f"test vectors not found at {path}; set SWITCHBOARD_VECTORS to vectors.json")
    return {entry["id"]: entry for entry in json.loads(path.read_text(encoding="utf-8"))}


def vector(vector_id: str) -> dict:
    return _all()[vector_id]


def vector_ids(platforms: set[str], kind: str) -> list[str]:
    return sorted(i for i, entry in _all().items() if entry["platform"] in platforms and entry["kind"] == kind)
