"""Per-bot send pacing shared by every worker: a Redis-held schedule (GCRA with no
burst), so a 10-QPS bot starts at most one send per 110 ms across the whole fleet.

The 10 % headroom is for the way from our clock to the platform's: a send leaves a few
milliseconds after its slot, and unevenly, so slots spaced exactly 1/qps apart can
arrive as qps + 1 messages within one second at the platform."""

from __future__ import annotations

import logging
import time

from django.conf import settings
from django_redis import get_redis_connection
from prometheus_client import Counter, Histogram
from redis.exceptions import RedisError

from bots.models import Bot

logger = logging.getLogger("switchboard.dialog")

RATE_LIMIT_WAIT = Histogram(
    "switchboard_rate_limit_wait_seconds",
    "Time a reply waited for its bot's send slot",
    buckets=(0, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)
RATE_LIMIT_UNAVAILABLE = Counter(
    "switchboard_rate_limit_unavailable_total", "Sends paced locally because Redis did not answer"
)

HEADROOM = 0.1

# Reserve the next free slot on the bot's schedule and return how long to wait for it.
# Redis's own clock is used so that workers on several machines agree.
_RESERVE = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local slot = math.max(tat, now)
local next_free = slot + interval
redis.call('SET', KEYS[1], string.format('%d', next_free), 'PX', string.format('%d', next_free - now + 1000))
return slot - now
"""


def reserve_slot(bot: Bot) -> float:
    """Seconds until this bot may send; the slot is ours once returned."""
    qps = bot.rate_limit_qps or 10.0
    interval_ms = max(int(1000 * (1 + HEADROOM) / qps), 1)
    key = f"{settings.CACHES['default']['KEY_PREFIX']}:rate:{bot.uuid}"
    try:
        redis = get_redis_connection("default")
        return int(redis.eval(_RESERVE, 1, key, interval_ms)) / 1000
    except RedisError as exc:
        # Without the shared schedule, pace this worker alone: safer than no limit.
        RATE_LIMIT_UNAVAILABLE.inc()
        logger.warning("rate limiter unavailable for bot %s, pacing locally: %s", bot.name, exc)
        return interval_ms / 1000


def wait_for_slot(bot: Bot, sleep=time.sleep, defer_after: float | None = None) -> float:
    """Reserve the bot's next send slot and sleep until it. What is left to wait: 0, or,
    when the slot is more than defer_after seconds away, the whole wait, not slept (the
    slot stays reserved for the caller to come back to)."""
    wait = reserve_slot(bot)
    RATE_LIMIT_WAIT.observe(wait)
    if defer_after is not None and wait > defer_after:
        return wait
    if wait > 0:
        sleep(wait)
    return 0.0
