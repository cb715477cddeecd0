"""The bots and routing rules a worker process uses, cached until the configuration changes.

Loading them for every message took two queries whose ORM work cost more CPU than the
rest of a turn with a local model (docs/performance.md). A generation counter in Redis,
bumped after any bot, model backend or routing rule is saved or deleted, tells every
worker process at once that its copy is stale: one GET per message instead.

If Redis does not answer, nothing is cached and the database is read as before. A bump
lost while Redis was away is outlived by MAX_AGE_SECONDS.
"""

from __future__ import annotations

import logging
import time

from django.conf import settings
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django_redis import get_redis_connection
from redis.exceptions import RedisError

from bots.models import Bot
from routing.engine import candidate_rules
from routing.models import ModelBackend, RoutingRule

logger = logging.getLogger("switchboard.dialog")

MAX_AGE_SECONDS = 60.0
_cache: dict[int, tuple[bytes, float, Bot, list[RoutingRule]]] = {}


def _key() -> str:
    return f"{settings.CACHES['default']['KEY_PREFIX']}:config-generation"


def _generation() -> bytes | None:
    try:
        # A counter that was never bumped (or Redis lost it) is a generation too.
        return get_redis_connection("default").get(_key()) or b"0"
    except RedisError as exc:
        logger.warning("configuration generation unavailable, reading bots and rules from the database: %s", exc)
        return None


def _load(bot_id: int) -> tuple[Bot, list[RoutingRule]]:
    bot = Bot.objects.select_related("default_backend").get(pk=bot_id)
    return bot, candidate_rules(bot)


def bot_and_rules(bot_id: int) -> tuple[Bot, list[RoutingRule]]:
    """The bot (with its default backend) and its candidate routing rules, in order.
    Raises Bot.DoesNotExist for a deleted bot. Callers must not change what they get."""
    generation = _generation()
    if generation is None:
        return _load(bot_id)
    now = time.monotonic()
    cached = _cache.get(bot_id)
    if cached is not None and cached[0] == generation and now - cached[1] < MAX_AGE_SECONDS:
        return cached[2], cached[3]
    bot, rules = _load(bot_id)
    if len(_cache) > 10_000:
        _cache.clear()
    _cache[bot_id] = (generation, now, bot, rules)
    return bot, rules


def _bump() -> None:
    try:
        get_redis_connection("default").incr(_key())
    except RedisError as exc:
        logger.warning(
            "could not announce a configuration change (workers catch up within %d s): %s", MAX_AGE_SECONDS, exc
        )


@receiver([post_save, post_delete], sender=Bot, dispatch_uid="config-generation-bot")
@receiver([post_save, post_delete], sender=ModelBackend, dispatch_uid="config-generation-backend")
@receiver([post_save, post_delete], sender=RoutingRule, dispatch_uid="config-generation-rule")
def _configuration_changed(**kwargs) -> None:
    # Now, for whoever reads inside this transaction (an in-process turn, such as the
    # console's test message); and again after the commit, because a worker that
    # reloaded in between read the old rows.
    _bump()
    transaction.on_commit(_bump)
