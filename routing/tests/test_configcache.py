"""The worker's copy of bots and routing rules: reused while nothing changed, reloaded
as soon as a bot, backend or rule is saved or deleted anywhere, read from the database
every time when Redis does not answer."""

from __future__ import annotations

import copy

import pytest

from routing import configcache
from routing.engine import select_backend
from routing.models import ModelBackend, RoutingRule
from tests.processes import free_port


@pytest.fixture
def bot(make_bot, backend):
    return make_bot(name="cached", default_backend=backend)


def test_a_second_message_reads_nothing_from_the_database(bot, django_assert_num_queries):
    with django_assert_num_queries(2):  # the bot with its backend, then the rules
        first, rules = configcache.bot_and_rules(bot.pk)
    with django_assert_num_queries(0):
        again, same_rules = configcache.bot_and_rules(bot.pk)
    assert again is first and same_rules is rules and first.default_backend.name == "echo"


@pytest.mark.parametrize("change", ["new rule", "rule edited", "rule deleted", "backend edited", "bot edited"])
def test_any_saved_change_is_seen_by_the_next_message(bot, backend, change, django_capture_on_commit_callbacks):
    other = ModelBackend.objects.create(name="other", kind="echo")
    with django_capture_on_commit_callbacks(execute=True):
        existing = RoutingRule.objects.create(bot=bot, priority=5, match="keyword", pattern="invoice", backend=other)
    cached_bot, rules = configcache.bot_and_rules(bot.pk)
    assert [r.pattern for r in rules] == ["invoice"]

    with django_capture_on_commit_callbacks(execute=True):
        if change == "new rule":
            RoutingRule.objects.create(bot=bot, priority=1, match="always", backend=other)
        elif change == "rule edited":
            existing.pattern = "refund"
            existing.save()
        elif change == "rule deleted":
            existing.delete()
        elif change == "backend edited":
            backend.model = "m9"
            backend.save()
        else:
            bot.system_prompt = "Be brief."
            bot.save()

    fresh_bot, fresh_rules = configcache.bot_and_rules(bot.pk)
    assert fresh_bot is not cached_bot
    expected = {
        "new rule": ["always", "keyword"],
        "rule edited": ["keyword"],
        "rule deleted": [],
        "backend edited": ["keyword"],
        "bot edited": ["keyword"],
    }[change]
    assert [r.match for r in fresh_rules] == expected
    if change == "rule edited":
        assert fresh_rules[0].pattern == "refund"
    if change == "backend edited":
        assert fresh_bot.default_backend.model == "m9"
    if change == "bot edited":
        assert fresh_bot.system_prompt == "Be brief."


def test_the_cached_rules_route_like_the_database_does(bot, backend, django_capture_on_commit_callbacks):
    other = ModelBackend.objects.create(name="other", kind="echo")
    with django_capture_on_commit_callbacks(execute=True):
        RoutingRule.objects.create(bot=bot, priority=5, match="regex", pattern=r"^/draw", backend=other)
    cached_bot, rules = configcache.bot_and_rules(bot.pk)
    for text in ("/draw a cat", "hello"):
        assert select_backend(cached_bot, text, "p2p", rules) == select_backend(bot, text, "p2p")


def test_without_redis_every_message_reads_the_database(bot, settings, django_assert_num_queries):
    caches = copy.deepcopy(settings.CACHES)
    caches["default"]["LOCATION"] = f"redis://127.0.0.1:{free_port()}/0"
    caches["default"]["OPTIONS"] = {**caches["default"].get("OPTIONS", {}), "SOCKET_CONNECT_TIMEOUT": 0.5}
    settings.CACHES = caches
    for _ in range(2):
        with django_assert_num_queries(2):
            loaded, _rules = configcache.bot_and_rules(bot.pk)
        assert loaded.pk == bot.pk
    assert configcache._cache == {}


def test_a_copy_older_than_the_limit_is_reloaded_even_without_a_change(bot, monkeypatch, django_assert_num_queries):
    configcache.bot_and_rules(bot.pk)
    monkeypatch.setattr(configcache, "MAX_AGE_SECONDS", 0.0)
    with django_assert_num_queries(2):
        configcache.bot_and_rules(bot.pk)
