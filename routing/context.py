"""Conversation context in Redis: one list per bot + chat + sender, capped and expiring.

One round trip to load (LRANGE) and one to save (a MULTI of RPUSH, LTRIM, EXPIRE),
however long the history is.
"""

from __future__ import annotations

import json
import logging

from django.conf import settings
from django_redis import get_redis_connection
from redis.exceptions import RedisError

from bots.models import Bot

logger = logging.getLogger("switchboard.dialog")


class ContextStore:
    def __init__(self, redis=None) -> None:
        self.redis = redis or get_redis_connection("default")

    @staticmethod
    def key(bot: Bot, chat_id: str, sender_id: str) -> str:
        return f"{settings.CACHES['default']['KEY_PREFIX']}:ctx:{bot.uuid}:{chat_id}:{sender_id}"

    def load(self, bot: Bot, chat_id: str, sender_id: str) -> list[dict[str, str]]:
        """The last max_context_turns turns as chat messages, oldest first. If Redis is
        down the bot still answers, only without memory."""
        if bot.max_context_turns == 0:
            return []
        try:
            items = self.redis.lrange(self.key(bot, chat_id, sender_id), -2 * bot.max_context_turns, -1)
        except RedisError as exc:
            logger.warning("context unavailable for bot %s, answering without history: %s", bot.name, exc)
            return []
        return [json.loads(item) for item in items]

    def append(self, bot: Bot, chat_id: str, sender_id: str, user_text: str, assistant_text: str) -> None:
        if bot.max_context_turns == 0:
            return
        key = self.key(bot, chat_id, sender_id)
        try:
            pipe = self.redis.pipeline(transaction=True)
            pipe.rpush(
                key,
                json.dumps({"role": "user", "content": user_text}, ensure_ascii=False),
                json.dumps({"role": "assistant", "content": assistant_text}, ensure_ascii=False),
            )
            pipe.ltrim(key, -2 * bot.max_context_turns, -1)
            pipe.expire(key, bot.context_ttl)
            pipe.execute()
        except RedisError as exc:
            logger.warning("could not save context for bot %s: %s", bot.name, exc)

    def clear(self, bot: Bot, chat_id: str, sender_id: str) -> None:
        self.redis.delete(self.key(bot, chat_id, sender_id))
