"""Context in Redis (capped, expiring, two round trips a turn) and the shared send pacing."""

from __future__ import annotations

import threading
import time

import pytest
from django_redis import get_redis_connection

from routing import ratelimit
from routing.context import ContextStore


class CountingRedis:
    """The real Redis client, counting round trips (a pipeline's execute is one)."""

    def __init__(self, real) -> None:
        self.real = real
        self.round_trips = 0

    def __getattr__(self, name):
        attr = getattr(self.real, name)
        if name == "pipeline":

            def pipeline(*args, **kwargs):
                pipe = attr(*args, **kwargs)
                execute = pipe.execute

                def counted_execute(*a, **kw):
                    self.round_trips += 1
                    return execute(*a, **kw)

                pipe.execute = counted_execute
                return pipe

            return pipeline
        if callable(attr):

            def call(*args, **kwargs):
                self.round_trips += 1
                return attr(*args, **kwargs)

            return call
        return attr


@pytest.fixture
def bot(make_bot):
    bot = make_bot(name="ctx", max_context_turns=3, context_ttl=1800)
    yield bot
    ContextStore().clear(bot, "chat", "user")


def test_turns_are_kept_in_order_capped_and_expiring(bot):
    store = ContextStore()
    for n in range(5):
        store.append(bot, "chat", "user", f"q{n}", f"a{n}")
    history = store.load(bot, "chat", "user")
    assert [m["content"] for m in history] == ["q2", "a2", "q3", "a3", "q4", "a4"]
    assert [m["role"] for m in history[:2]] == ["user", "assistant"]
    ttl = get_redis_connection("default").ttl(ContextStore.key(bot, "chat", "user"))
    assert 1790 < ttl <= 1800


def test_context_is_per_chat_and_sender(bot):
    store = ContextStore()
    store.append(bot, "chat", "user", "mine", "ok")
    assert store.load(bot, "chat", "someone-else") == []
    assert store.load(bot, "other-chat", "user") == []
    store.clear(bot, "chat", "someone-else")


def test_one_round_trip_to_load_and_one_to_save_however_long_the_history(bot):
    bot.max_context_turns = 50
    counting = CountingRedis(get_redis_connection("default"))
    store = ContextStore(counting)
    for n in range(50):
        store.append(bot, "chat", "user", f"q{n}" * 50, f"a{n}" * 50)
    counting.round_trips = 0
    assert len(store.load(bot, "chat", "user")) == 100
    store.append(bot, "chat", "user", "again", "fine")
    assert counting.round_trips == 2


def test_zero_turns_means_no_memory(bot):
    bot.max_context_turns = 0
    store = ContextStore()
    store.append(bot, "chat", "user", "q", "a")
    assert store.load(bot, "chat", "user") == []


def test_unicode_survives(bot):
    store = ContextStore()
    store.append(bot, "chat", "user", "你好", "您好！")
    assert [m["content"] for m in store.load(bot, "chat", "user")] == ["你好", "您好！"]


def test_pacing_is_shared_by_concurrent_senders(make_bot):
    bot = make_bot(name="paced", rate_limit_qps=20)  # one slot every 50 ms
    sent: list[float] = []
    lock = threading.Lock()

    def sender():
        for _ in range(5):
            ratelimit.wait_for_slot(bot)
            with lock:
                sent.append(time.monotonic())

    threads = [threading.Thread(target=sender) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sent.sort()
    assert len(sent) == 20
    gaps = [b - a for a, b in zip(sent, sent[1:], strict=False)]
    # Slots are 55 ms apart (50 ms and 10 % headroom) on Redis's clock; allow some jitter.
    assert min(gaps) > 0.045, gaps
    # And nobody waited needlessly: 20 sends take about 19 intervals.
    assert sent[-1] - sent[0] < 19 * 0.055 + 0.5


def test_idle_bot_sends_at_once(make_bot):
    bot = make_bot(name="idle", rate_limit_qps=1)
    assert ratelimit.reserve_slot(bot) == 0
    # The second message in the same second waits about a second.
    assert 1.0 <= ratelimit.reserve_slot(bot) <= 1.1
