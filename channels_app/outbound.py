"""Splitting a long reply into parts a platform accepts, without losing a character."""

from __future__ import annotations

import re
from typing import Literal


def measure(text: str, unit: Literal["chars", "bytes"]) -> int:
    return len(text.encode("utf-8")) if unit == "bytes" else len(text)


def _hard_split(text: str, limit: int, unit: Literal["chars", "bytes"]) -> list[str]:
    parts, current = [], ""
    for char in text:
        if current and measure(current + char, unit) > limit:
            parts.append(current)
            current = ""
        current += char
    if current:
        parts.append(current)
    return parts


def split_reply(text: str, limit: int, unit: Literal["chars", "bytes"] = "chars") -> list[str]:
    """Split on paragraph boundaries, then lines, then sentences, then characters, so
    every part fits `limit` and joining the parts gives back the text."""
    if measure(text, unit) <= limit:
        return [text]
    for separator in (r"(?<=\n\n)", r"(?<=\n)", r"(?<=[.!?] )|(?<=[。！？])"):
        pieces = [p for p in re.split(separator, text) if p]
        if len(pieces) > 1:
            break
    else:
        return _hard_split(text, limit, unit)
    parts, current = [], ""
    for piece in pieces:
        if current and measure(current + piece, unit) > limit:
            parts.append(current)
            current = ""
        if measure(piece, unit) > limit:
            parts.extend(split_reply(piece, limit, unit))
            continue
        current += piece
    if current:
        parts.append(current)
    return parts
