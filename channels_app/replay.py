"""The nonce cache that tells a platform's re-delivery of a request from a replay.

Each claim stores, under the bot's nonce, a fingerprint of the message the nonce came
with, for as long as the request's timestamp passes the window check. The same nonce
again with the same message is the platform sending the request again (WeCom and WeChat
do when our answer was late): it gets the platform's normal answer, and the unique
(bot, message id) row keeps it from being answered twice. The same nonce with another
message is refused: only a replayer who could not sign that message would send it.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import math
import time
from dataclasses import dataclass

from django.conf import settings
from django_redis import get_redis_connection
from prometheus_client import Counter
from redis.exceptions import RedisError

logger = logging.getLogger("switchboard.callbacks")

REPLAY_CACHE_UNAVAILABLE = Counter(
    "switchboard_replay_cache_unavailable_total",
    "Callbacks accepted without a nonce check because Redis did not answer",
)

# SET NX and, when the key exists, the fingerprint it holds, in one atomic step: nil for
# a new claim. (SET … NX GET does the same only from Redis 7.0; Debian 11 and Ubuntu
# 22.04 ship Redis 6.)
_CLAIM_SCRIPT = (
    "local previous = redis.call('GET', KEYS[1]) "
    "if previous then return previous end "
    "redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) "
    "return false"
)


class Claim(enum.Enum):
    NEW = "new"
    #: the nonce came before with this very message: the platform sent the request again
    SAME_MESSAGE = "same message"
    #: the nonce came before with another message: a replay
    OTHER_MESSAGE = "other message"


@dataclass(frozen=True)
class NonceClaim:
    """One request's claim on its nonce."""

    #: `<bot uuid>:<nonce>`
    name: str
    #: SHA-256 (hex) of what the nonce must stay with (Adapter.claim_nonce)
    fingerprint: str
    #: the epoch second after which the request's timestamp no longer passes the check
    valid_until: float

    @classmethod
    def of(cls, name: str, message: bytes | str, valid_until: float) -> NonceClaim:
        data = message.encode("utf-8") if isinstance(message, str) else message
        return cls(name, hashlib.sha256(data).hexdigest(), valid_until)

    @property
    def key(self) -> str:
        return key(self.name)

    def ttl(self) -> int:
        """Seconds to keep the claim: until the timestamp leaves the window, one second
        more for the whole seconds Redis counts in, at least one."""
        return max(math.ceil(self.valid_until - time.time()) + 1, 1)

    def command(self) -> tuple:
        """The Redis command that makes the claim; its reply goes to outcome()."""
        return ("EVAL", _CLAIM_SCRIPT, 1, self.key, self.fingerprint, self.ttl())

    def outcome(self, reply: bytes | str | None) -> Claim:
        """What the reply to command() says about this claim."""
        if reply is None:
            return Claim.NEW
        stored = reply.decode() if isinstance(reply, bytes) else reply
        return Claim.SAME_MESSAGE if stored == self.fingerprint else Claim.OTHER_MESSAGE


def unavailable(exc: Exception) -> None:
    """Count and log a claim that could not be checked (accepted, as claim() does)."""
    REPLAY_CACHE_UNAVAILABLE.inc()
    logger.warning("nonce cache unavailable, accepting without replay check: %s", exc)


def key(name: str) -> str:
    """The Redis key of a nonce claim."""
    return f"{settings.CACHES['default']['KEY_PREFIX']}:nonce:{name}"


def claim(nonce: NonceClaim) -> Claim:
    """Claim a nonce on its own. Redis being down must not stop the platforms' traffic:
    the signature and timestamp checks still hold and the database's unique constraint
    still drops duplicates, so we accept (NEW), log and count it."""
    try:
        return nonce.outcome(get_redis_connection("default").execute_command(*nonce.command()))
    except RedisError as exc:
        unavailable(exc)
        return Claim.NEW


def release(name: str) -> None:
    try:
        get_redis_connection("default").delete(key(name))
    except RedisError as exc:
        logger.warning("could not release nonce after a failed callback: %s", exc)
