"""Choosing the model backend for a message: bot rules, then global rules, each in
priority order; the bot's default backend when nothing matches."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from django.db.models import F, Q

from bots.models import Bot
from routing.models import MatchKind, ModelBackend, RoutingRule


class NoBackend(Exception):
    """No rule matched and the bot has no (enabled) default backend."""


@dataclass(frozen=True)
class Selection:
    backend: ModelBackend
    fallback: ModelBackend | None
    rule: RoutingRule | None

    @property
    def explanation(self) -> str:
        return f"rule {self.rule}" if self.rule else "the bot's default backend"


@lru_cache(maxsize=512)
def _compiled(pattern: str) -> re.Pattern:
    return re.compile(pattern)


def rule_matches(rule: RoutingRule, bot: Bot, text: str, chat_type: str) -> bool:
    if rule.match == MatchKind.ALWAYS:
        return True
    if rule.match == MatchKind.KEYWORD:
        # A comma-separated list of keywords, any of which may appear anywhere.
        lowered = text.casefold()
        return any(k.strip().casefold() in lowered for k in rule.pattern.split(",") if k.strip())
    if rule.match == MatchKind.REGEX:
        return _compiled(rule.pattern).search(text) is not None
    if rule.match == MatchKind.PLATFORM:
        return bot.platform == rule.pattern
    if rule.match == MatchKind.CHAT_TYPE:
        return chat_type == rule.pattern
    return False


def candidate_rules(bot: Bot) -> list[RoutingRule]:
    """The bot's rules, then the global ones, each by priority: one query."""
    return list(
        RoutingRule.objects.filter(Q(bot=bot) | Q(bot__isnull=True), enabled=True, backend__enabled=True)
        .select_related("backend", "fallback_backend")
        .order_by(F("bot").asc(nulls_last=True), "priority", "id")
    )


def select_backend(bot: Bot, text: str, chat_type: str, rules: list[RoutingRule] | None = None) -> Selection:
    """rules: candidate_rules(bot), if the caller has them already."""
    for rule in candidate_rules(bot) if rules is None else rules:
        if rule_matches(rule, bot, text, chat_type):
            fallback = rule.fallback_backend if rule.fallback_backend and rule.fallback_backend.enabled else None
            return Selection(rule.backend, fallback, rule)
    if bot.default_backend_id and bot.default_backend.enabled:
        return Selection(bot.default_backend, None, None)
    raise NoBackend(
        f"bot {bot.name}: no routing rule matched and it has no enabled default backend; set one in the console"
    )
