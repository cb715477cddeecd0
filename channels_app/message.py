"""The normal form every adapter turns a platform's event into, and what goes back out."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ParsedMessage:
    """One user message, whatever platform it came from.

    `platform_message_id` is the platform's own id for the message: the dedup key.
    `reply_context` holds what the adapter needs later to answer (e.g. a message id to
    reply to, a session webhook); it is stored with the row and handed back to `send`.
    """

    platform_message_id: str
    chat_id: str
    chat_type: str  # routing.models.ChatType: "p2p" or "group"
    sender_id: str
    text: str
    mentioned: bool = False
    reply_context: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict)


@dataclass(frozen=True)
class OutboundReply:
    """One piece of a reply, ready for the platform's send API."""

    chat_id: str
    chat_type: str
    sender_id: str
    text: str
    reply_context: dict
    # Stable per message and part, so a platform that supports idempotent sends
    # (Feishu's `uuid`) drops a retried duplicate.
    idempotency_key: str
    # Which piece of the reply this is (1-based) and how many there are, for receivers
    # that put a long reply back together.
    part: int = 1
    parts: int = 1
    # A reply the user already got, sent again on purpose (the console's "re-send"): a
    # platform that drops repeats by content (WeCom) must not drop this one.
    resend: bool = False
