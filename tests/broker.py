"""Reading task messages as they wait in the Redis broker's queue (tests only)."""

from __future__ import annotations

import base64
import json


def decode_task_message(raw: bytes) -> dict:
    """A queued message as kombu's Redis transport stores it, with its body (Celery's
    [args, kwargs, embed]) decoded."""
    envelope = json.loads(raw)
    envelope["body"] = json.loads(base64.b64decode(envelope["body"]))
    return envelope
