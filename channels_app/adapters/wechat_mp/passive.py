"""The passive-reply outbox of a WeChat Official Account that may not call the
customer-service API. Such an account can answer a user only in the HTTP response to
one of the user's own messages, so the dialog task does not call WeChat: it leaves each
reply part here (`put`), and the callback WeChat holds open for that message, or for the
user's next one, takes it out (`take`) and answers with it.

Redis keys, all under `<prefix>:wxmp:<bot uuid>:`
- `outbox:<openid>`   list of parts waiting for this user, oldest first (TTL a day)
- `ready:<msgid>`     a wake-up list: the callback of msgid waits on it with BLPOP
- `live:<msgid>`      present while WeChat still holds or is about to retry msgid; a part
                      whose message is not live any more is an orphan: the user's next
                      message carries it
- `queued:<part id>`  makes `put` idempotent when the task retries a send
- `deliveries:<msgid>`, `answered:<msgid>`  how often WeChat delivered msgid, and what we
                      answered (a delivery after our answer means WeChat lost it)
- `lock:<openid>`     one taker at a time per user, so a part is handed over once
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from django.conf import settings
from django_redis import get_redis_connection

from channels_app.outbound import split_reply

TEXT_LIMIT_BYTES = 2048
# Kept free in every passive reply for our own lines around the model's text (the
# "earlier question" line, the "send any message" line); a reply part is cut to
# TEXT_LIMIT_BYTES - NOTE_BYTES so one part with its notes always fits.
NOTE_BYTES = 256
PART_LIMIT_BYTES = TEXT_LIMIT_BYTES - NOTE_BYTES
# A user's pending answers are kept this long for their next message.
PENDING_TTL_SECONDS = 24 * 3600
ANSWERED_TTL_SECONDS = 60
DELIVERIES_TTL_SECONDS = 3600
READY_TTL_SECONDS = 120
QUESTION_CHARS = 16
SEPARATOR = "\n\n"

EARLIER_ANSWER = "【你之前问“{question}”的回答】\n"
CONTINUED = "\n\n（未完，发送任意消息查看后续）"
STILL_THINKING = "（回答还在生成中，稍后发送任意消息即可收到）"
# Room for whichever closing line a reply gets.
CLOSING_BYTES = max(len(CONTINUED.encode()), len((SEPARATOR + STILL_THINKING).encode()))

# Atomic put: the part is queued and its callback woken once, even if the task retries.
_PUT = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[2]) then
  redis.call('RPUSH', KEYS[2], ARGV[1])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
  redis.call('RPUSH', KEYS[3], '1')
  redis.call('EXPIRE', KEYS[3], ARGV[3])
  return 1
end
return 0
"""


def question_snippet(text: str) -> str:
    """The start of a user's message, to name the question an answer belongs to."""
    flat = " ".join(text.split())
    return flat if len(flat) <= QUESTION_CHARS else flat[:QUESTION_CHARS] + "…"


@dataclass(frozen=True)
class QueuedPart:
    id: str  # the OutboundReply's idempotency key
    msgid: str  # the MsgId of the message this part answers
    text: str
    question: str  # question_snippet() of that message

    def encode(self) -> str:
        return json.dumps(
            {"id": self.id, "msgid": self.msgid, "text": self.text, "question": self.question}, ensure_ascii=False
        )

    @classmethod
    def decode(cls, raw: bytes) -> QueuedPart:
        data = json.loads(raw)
        return cls(id=data["id"], msgid=data["msgid"], text=data["text"], question=data["question"])


@dataclass(frozen=True)
class Taken:
    """What one passive reply carries: the parts (for the rows) and the text."""

    parts: list[QueuedPart]
    content: str
    # Parts for this user that this reply had no room for (and no other callback holds).
    more_waiting: bool


class PassiveOutbox:
    def __init__(self, bot_uuid: object) -> None:
        self.redis = get_redis_connection("default")
        self.prefix = f"{settings.CACHES['default']['KEY_PREFIX']}:wxmp:{bot_uuid}"

    def _key(self, kind: str, name: str) -> str:
        return f"{self.prefix}:{kind}:{name}"

    # -- the task's side ---------------------------------------------------------------

    def put(self, openid: str, part: QueuedPart) -> bool:
        """Queue a reply part for openid and wake the callback waiting for its message.
        False if this part was queued before (a retried send)."""
        keys = [self._key("queued", part.id), self._key("outbox", openid), self._key("ready", part.msgid)]
        return bool(self.redis.eval(_PUT, len(keys), *keys, part.encode(), PENDING_TTL_SECONDS, READY_TTL_SECONDS))

    # -- the callback's side -----------------------------------------------------------

    def count_delivery(self, msgid: str) -> int:
        """How many times WeChat has delivered msgid, this time included."""
        key = self._key("deliveries", msgid)
        pipe = self.redis.pipeline()
        pipe.incr(key)
        pipe.expire(key, DELIVERIES_TTL_SECONDS)
        return int(pipe.execute()[0])

    def mark_live(self, msgid: str, seconds: float) -> None:
        self.redis.set(self._key("live", msgid), 1, px=max(int(seconds * 1000), 1))

    def end_live(self, msgid: str) -> None:
        self.redis.delete(self._key("live", msgid))

    def answered(self, msgid: str) -> str | None:
        value = self.redis.get(self._key("answered", msgid))
        return value.decode("utf-8") if value is not None else None

    def remember_answer(self, msgid: str, content: str) -> None:
        self.redis.set(self._key("answered", msgid), content.encode("utf-8"), ex=ANSWERED_TTL_SECONDS)

    def wait_ready(self, msgid: str, until: float) -> bool:
        """Block until a part of msgid is put or time.monotonic() reaches `until`.
        BLPOP runs in slices shorter than the Redis client's socket timeout; a timeout of
        0 would block for ever, so the last sliver is not waited for."""
        key = self._key("ready", msgid)
        while (remaining := until - time.monotonic()) > 0.01:
            if self.redis.blpop([key], timeout=round(min(remaining, 1.0), 3)) is not None:
                return True
        return False

    def take(self, openid: str, msgid: str, *, require_own: bool) -> Taken | None:
        """Take out, oldest first, as many of openid's parts as one reply to msgid can
        carry: msgid's own parts and orphans (parts of earlier messages whose callbacks
        are over). Parts of another message WeChat still holds are left to that message.
        With require_own, nothing is taken until a part of msgid itself is there."""
        outbox = self._key("outbox", openid)
        with self.redis.lock(self._key("lock", openid), timeout=5, blocking_timeout=2):
            raws = self.redis.lrange(outbox, 0, -1)
            parts = [QueuedPart.decode(raw) for raw in raws]
            others = {part.msgid for part in parts} - {msgid}
            live = {other for other in others if self.redis.exists(self._key("live", other))}
            candidates = [(index, part) for index, part in enumerate(parts) if part.msgid not in live]
            # The parts of one answer stay together, answers in the order they came.
            first_seen: dict[str, int] = {}
            for index, part in candidates:
                first_seen.setdefault(part.msgid, index)
            candidates.sort(key=lambda item: (first_seen[item[1].msgid], item[0]))
            if not candidates or (require_own and all(part.msgid != msgid for _, part in candidates)):
                return None

            pieces: list[str] = []
            chosen: list[tuple[int, QueuedPart]] = []
            used = CLOSING_BYTES
            split_rest: tuple[int, QueuedPart] | None = None
            for index, part in candidates:
                continues = bool(chosen) and chosen[-1][1].msgid == part.msgid
                lead = "" if part.msgid == msgid or continues else EARLIER_ANSWER.format(question=part.question)
                sep = SEPARATOR if pieces else ""
                size = len((sep + lead + part.text).encode("utf-8"))
                if used + size <= TEXT_LIMIT_BYTES:
                    pieces.append(sep + lead + part.text)
                    chosen.append((index, part))
                    used += size
                    continue
                if not pieces:
                    # Queued under another limit (the bot changed mode meanwhile): hand over
                    # what fits and leave the rest in its place. Never cut.
                    room = TEXT_LIMIT_BYTES - used - len(lead.encode("utf-8"))
                    head, *rest = split_reply(part.text, room, "bytes")
                    pieces.append(lead + head)
                    chosen.append((index, QueuedPart(part.id, part.msgid, head, part.question)))
                    split_rest = (index, QueuedPart(part.id, part.msgid, "".join(rest), part.question))
                break

            pipe = self.redis.pipeline()
            for index, _ in chosen:
                if split_rest is not None and split_rest[0] == index:
                    pipe.lset(outbox, index, split_rest[1].encode())
                else:
                    pipe.lrem(outbox, 1, raws[index])
            pipe.execute()
        return Taken(
            parts=[part for _, part in chosen],
            content="".join(pieces),
            more_waiting=split_rest is not None or len(chosen) < len(candidates),
        )
