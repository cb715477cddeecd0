"""Routing rules: bot rules before global ones, priority order, each match kind, the
default backend last, disabled things skipped."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from routing.engine import NoBackend, select_backend
from routing.models import ModelBackend, RoutingRule


@pytest.fixture
def backends(db):
    return {name: ModelBackend.objects.create(name=name, kind="echo") for name in ("default", "a", "b", "c", "fb")}


@pytest.fixture
def bot(make_bot, backends):
    return make_bot(name="helpdesk", default_backend=backends["default"])


def rule(backends, bot=None, **fields) -> RoutingRule:
    fields["backend"] = backends[fields.pop("to")]
    return RoutingRule.objects.create(bot=bot, **fields)


def test_default_backend_when_no_rule_matches(bot, backends):
    rule(backends, bot, match="keyword", pattern="invoice", to="a")
    selection = select_backend(bot, "hello there", "p2p")
    assert selection.backend == backends["default"] and selection.rule is None


@pytest.mark.parametrize(
    ("match", "pattern", "text", "chat_type", "hits"),
    [
        ("keyword", "invoice", "Where is my INVOICE?", "p2p", True),
        ("keyword", "refund, return", "I want to return it", "p2p", True),
        ("keyword", "invoice", "hello", "p2p", False),
        ("regex", r"^/code\b", "/code fix this", "p2p", True),
        ("regex", r"^/code\b", "please /code", "p2p", False),
        ("platform", "wecom", "anything", "p2p", True),
        ("platform", "feishu", "anything", "p2p", False),
        ("chat_type", "group", "anything", "group", True),
        ("chat_type", "group", "anything", "p2p", False),
        ("always", "", "anything", "p2p", True),
    ],
)
def test_match_kinds(bot, backends, match, pattern, text, chat_type, hits):
    rule(backends, bot, match=match, pattern=pattern, to="a")
    assert (select_backend(bot, text, chat_type).backend == backends["a"]) is hits


def test_priority_order_and_bot_rules_before_global_ones(bot, backends):
    rule(backends, None, priority=1, match="always", to="c")  # global, even at top priority
    rule(backends, bot, priority=20, match="keyword", pattern="x", to="b")
    first = rule(backends, bot, priority=10, match="keyword", pattern="x", to="a")
    selection = select_backend(bot, "x marks the spot", "p2p")
    assert selection.backend == backends["a"] and selection.rule == first
    # With no bot rule matching, the global rule wins over the default backend.
    assert select_backend(bot, "nothing", "p2p").backend == backends["c"]


def test_other_bots_rules_do_not_apply(bot, backends, make_bot):
    other = make_bot(name="sales")
    rule(backends, other, match="always", to="a")
    assert select_backend(bot, "hi", "p2p").backend == backends["default"]


def test_disabled_rules_and_backends_are_skipped(bot, backends):
    rule(backends, bot, priority=1, match="always", to="a", enabled=False)
    backends["b"].enabled = False
    backends["b"].save()
    rule(backends, bot, priority=2, match="always", to="b")
    rule(backends, bot, priority=3, match="always", to="c")
    assert select_backend(bot, "hi", "p2p").backend == backends["c"]


def test_fallback_comes_with_the_rule(bot, backends):
    rule(backends, bot, match="always", to="a", fallback_backend=backends["fb"])
    selection = select_backend(bot, "hi", "p2p")
    assert selection.fallback == backends["fb"] and "always" in selection.explanation


def test_no_backend_at_all_says_what_to_do(make_bot):
    orphan = make_bot(name="orphan")
    with pytest.raises(NoBackend, match="orphan: no routing rule matched and it has no enabled default backend"):
        select_backend(orphan, "hi", "p2p")


@pytest.mark.parametrize(
    ("match", "pattern", "message"),
    [
        ("regex", "(", "not a valid regular expression"),
        ("platform", "icq", "unknown platform"),
        ("chat_type", "channel", "p2p, group"),
        ("keyword", "", "needs a pattern"),
    ],
)
def test_rules_are_validated(backends, match, pattern, message):
    with pytest.raises(ValidationError, match=message):
        RoutingRule(match=match, pattern=pattern, backend=backends["a"]).full_clean()
