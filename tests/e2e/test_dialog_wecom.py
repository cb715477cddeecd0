"""The whole loop on WeCom with real parts: the callback view, PostgreSQL, Redis, a
Celery worker process, a fake WeCom API and a fake model server on loopback."""

from __future__ import annotations

import base64
import os
import secrets
import time

import pytest

from bots.models import Bot
from channels_app.models import InboundMessage, MessageStatus
from channels_app.tasks import sweep_outbox
from routing.models import ModelBackend, RoutingRule
from tests.e2e.conftest import CeleryWorker
from tests.fakes.model import FakeModel
from tests.fakes.server import Fault
from tests.fakes.wecom import DEFAULT_CORP_ID, DEFAULT_CORP_SECRET, FakeWeCom, wecom_callback, wecom_text_xml

pytestmark = pytest.mark.slow


@pytest.fixture
def wecom():
    with FakeWeCom() as fake:
        yield fake


@pytest.fixture
def model():
    with FakeModel() as fake:
        yield fake


@pytest.fixture
def bot(transactional_db, wecom, model) -> Bot:
    backend = ModelBackend.objects.create(name="main", kind="openai", base_url=f"{model.url}/v1", model="m1")
    return Bot.objects.create(
        name="helpdesk",
        platform="wecom",
        app_id=DEFAULT_CORP_ID,
        app_secret=DEFAULT_CORP_SECRET,
        token=secrets.token_urlsafe(12),
        encoding_aes_key=base64.b64encode(os.urandom(32)).decode()[:43],
        api_base_url=wecom.url,
        extra={"agent_id": 1000002},
        default_backend=backend,
    )


def deliver(client, bot: Bot, text: str, msg_id: int, user: str = "zhangsan") -> None:
    query, body = wecom_callback(bot, wecom_text_xml(bot.app_id, user, text, msg_id, 1000002))
    response = client.post(f"{bot.callback_path}?{query}", body, content_type="text/xml")
    assert response.status_code == 200 and response.content == b""


def wait_for_status(msg_id: str, status: str, timeout: float = 30) -> InboundMessage:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = InboundMessage.objects.filter(platform_message_id=msg_id).first()
        if row is not None and row.status == status:
            return row
        time.sleep(0.05)
    raise AssertionError(f"message {msg_id} is {row.status if row else 'missing'}, not {status}, after {timeout} s")


def test_a_message_is_answered_once_and_the_second_turn_sees_the_first(client, bot, wecom, model, celery_worker):
    deliver(client, bot, "hello", 1001)
    [first] = wecom.wait_for(r"/message/send", 1)
    assert first.json()["text"]["content"] == "[m1] hello (history=0)"
    assert first.json()["touser"] == "zhangsan" and first.json()["agentid"] == 1000002

    deliver(client, bot, "and again?", 1002)
    second = wecom.wait_for(r"/message/send", 2)[1]
    assert second.json()["text"]["content"] == "[m1] and again? (history=2)"

    row = wait_for_status("1001", MessageStatus.REPLIED)
    assert row.backend.name == "main" and row.reply_text == "[m1] hello (history=0)"
    assert row.route == "the bot's default backend" and row.error == ""
    assert row.attempts == 1 and row.parts_sent == 1
    # The callback's answer time, recorded on the row: the target is well under 50 ms.
    assert row.acked_ms is not None and row.acked_ms < 50
    assert row.model_ms > 0 and row.send_ms > 0 and row.replied_at > row.received_at
    assert len(wecom.received(r"/gettoken")) == 1  # the token is cached between sends


def test_a_redelivered_callback_gets_no_second_reply(client, bot, wecom, celery_worker):
    deliver(client, bot, "once please", 2001)
    deliver(client, bot, "once please", 2001)  # WeCom's retry: same MsgId, new nonce
    wecom.wait_for(r"/message/send", 1)
    wait_for_status("2001", MessageStatus.REPLIED)
    time.sleep(1.0)  # room for a wrong second reply to arrive
    assert len(wecom.received(r"/message/send")) == 1
    assert InboundMessage.objects.count() == 1


def test_a_keyword_rule_sends_the_message_to_its_backend(client, bot, wecom, model, celery_worker):
    billing = ModelBackend.objects.create(name="billing", kind="openai", base_url=f"{model.url}/v1", model="m2")
    RoutingRule.objects.create(bot=bot, priority=10, match="keyword", pattern="invoice", backend=billing)
    deliver(client, bot, "where is my invoice", 3001)
    deliver(client, bot, "good morning", 3002, user="lisi")
    sent = {r.json()["text"]["content"] for r in wecom.wait_for(r"/message/send", 2)}
    assert sent == {"[m2] where is my invoice (history=0)", "[m1] good morning (history=0)"}
    routed = wait_for_status("3001", MessageStatus.REPLIED)
    assert routed.backend == billing and routed.route.startswith("rule ")


def test_a_model_that_fails_twice_then_succeeds_still_answers(client, bot, wecom, model, celery_worker):
    model.plan(r"/chat/completions", Fault(503, {"error": {"message": "overloaded"}}), Fault(502))
    deliver(client, bot, "are you there", 4001)
    [sent] = wecom.wait_for(r"/message/send", 1)
    assert sent.json()["text"]["content"] == "[m1] are you there (history=0)"
    assert len(model.received(r"/chat/completions")) == 3
    assert wait_for_status("4001", MessageStatus.REPLIED).error == ""


def test_a_model_that_always_fails_leaves_a_failed_row_with_the_reason(client, bot, wecom, model, celery_worker):
    model.plan(r"/chat/completions", *[Fault(500, {"error": {"message": "boom"}})] * 4)
    deliver(client, bot, "hello?", 5001)
    row = wait_for_status("5001", MessageStatus.FAILED)
    assert "500" in row.error and "main" in row.error
    assert len(model.received(r"/chat/completions")) == 4  # one call and three retries
    assert wecom.received(r"/message/send") == []


def test_a_rule_fallback_answers_when_its_backend_is_down(client, bot, wecom, model, celery_worker):
    dead = ModelBackend.objects.create(
        name="dead", kind="openai", base_url="http://127.0.0.1:9/v1", model="x", timeout=1
    )
    spare = ModelBackend.objects.create(name="spare", kind="openai", base_url=f"{model.url}/v1", model="spare")
    RoutingRule.objects.create(bot=bot, match="always", backend=dead, fallback_backend=spare)
    deliver(client, bot, "hi", 5101)
    [sent] = wecom.wait_for(r"/message/send", 1, timeout=40)
    assert sent.json()["text"]["content"] == "[spare] hi (history=0)"
    assert wait_for_status("5101", MessageStatus.REPLIED).backend == spare


def test_a_worker_killed_mid_task_does_not_lose_the_message(client, bot, wecom, model, transactional_db, settings):
    model.delay = 5.0
    worker = CeleryWorker(extra_env={"OUTBOX_STUCK_AFTER": "2"}).start()
    try:
        deliver(client, bot, "survive this", 6001)
        model.wait_for(r"/chat/completions", 1)  # the worker is inside the model call now
        worker.kill_hard()
    finally:
        worker.stop()
    assert InboundMessage.objects.get(platform_message_id="6001").status == MessageStatus.PROCESSING
    model.delay = 0.0

    with CeleryWorker(extra_env={"OUTBOX_STUCK_AFTER": "2"}):
        settings.OUTBOX_STUCK_AFTER = 2
        time.sleep(2.5)
        assert sweep_outbox.run()["processing"] == 1
        [sent] = wecom.wait_for(r"/message/send", 1)
        assert sent.json()["text"]["content"] == "[m1] survive this (history=0)"
        row = wait_for_status("6001", MessageStatus.REPLIED)
        assert row.attempts == 2
        time.sleep(1.0)
        assert len(wecom.received(r"/message/send")) == 1


def test_thirty_messages_to_a_ten_qps_bot_all_arrive_at_ten_per_second(client, bot, wecom, transactional_db):
    bot.rate_limit_qps = 10
    bot.save()
    with CeleryWorker(concurrency=4):
        started = time.monotonic()
        for n in range(30):
            deliver(client, bot, f"burst {n}", 7000 + n, user=f"user{n}")
        assert time.monotonic() - started < 3  # the burst arrives faster than the bot may answer
        sends = wecom.wait_for(r"/message/send", 30, timeout=60)
    assert sorted(r.json()["text"]["content"] for r in sends) == sorted(
        f"[m1] burst {n} (history=0)" for n in range(30)
    )
    times = sorted(r.at for r in sends)
    busiest = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    assert busiest <= 10, f"{busiest} sends within one second"
    assert times[-1] - times[0] >= 2.9  # 30 sends paced at 110 ms need about 3.2 s


def test_a_send_that_fails_for_a_while_is_retried_until_it_arrives(client, bot, wecom, model, celery_worker):
    wecom.plan(r"/message/send", Fault(503, "upstream busy"), Fault(200, {"errcode": -1, "errmsg": "system busy"}))
    deliver(client, bot, "patience", 8001)
    sends = wecom.wait_for(r"/message/send", 3, timeout=30)
    assert sends[2].json()["text"]["content"] == "[m1] patience (history=0)"
    row = wait_for_status("8001", MessageStatus.REPLIED)
    # The model answered once; only the send was repeated.
    assert len(model.received(r"/chat/completions")) == 1 and row.parts_sent == 1


def test_a_permanent_send_error_is_not_retried(client, bot, wecom, celery_worker):
    wecom.plan(r"/message/send", Fault(200, {"errcode": 60020, "errmsg": "not allow to access from your ip"}))
    deliver(client, bot, "from an untrusted IP", 8101)
    row = wait_for_status("8101", MessageStatus.FAILED)
    assert "60020" in row.error
    time.sleep(1.5)
    assert len(wecom.received(r"/message/send")) == 1


def test_a_long_answer_is_split_and_every_part_arrives_in_order(client, bot, wecom, model, celery_worker):
    paragraphs = [f"第{n}段：" + "内容" * 150 for n in range(6)]  # about 900 bytes each
    model.answer = lambda request: "\n\n".join(paragraphs)
    deliver(client, bot, "tell me everything", 8201)
    row = wait_for_status("8201", MessageStatus.REPLIED)
    sends = wecom.received(r"/message/send")
    parts = [r.json()["text"]["content"] for r in sends]
    assert len(parts) == row.parts_sent >= 3
    assert all(len(p.encode()) <= 2048 for p in parts)
    assert "".join(parts) == "\n\n".join(paragraphs)


def test_a_slow_paced_bot_with_a_backlog_does_not_hold_up_another_bot(client, bot, wecom, transactional_db):
    """Four messages to a 1-QPS bot need 3.3 s of pacing. Their tasks come back for
    their send slots instead of sleeping in the two worker processes, so a message to
    another bot, right behind them in the queue, is answered at once."""
    noisy = Bot.objects.create(
        name="noisy",
        platform="wecom",
        app_id=bot.app_id,
        app_secret=DEFAULT_CORP_SECRET,
        token=secrets.token_urlsafe(12),
        encoding_aes_key=base64.b64encode(os.urandom(32)).decode()[:43],
        api_base_url=wecom.url,
        extra={"agent_id": 1000002},
        default_backend=bot.default_backend,
        rate_limit_qps=1,
    )
    with CeleryWorker(concurrency=2):
        for n in range(4):
            deliver(client, noisy, f"noisy {n}", 9300 + n, user=f"crowd{n}")
        sent_at = time.time()
        deliver(client, bot, "me too", 9400, user="patient")
        sends = wecom.wait_for(r"/message/send", 5, timeout=30)
    by_text = {r.json()["text"]["content"]: r.at for r in sends}
    assert by_text["[m1] me too (history=0)"] - sent_at < 1.0
    noisy_times = sorted(at for text, at in by_text.items() if "noisy" in text)
    assert len(noisy_times) == 4
    assert all(b - a >= 1.0 for a, b in zip(noisy_times, noisy_times[1:], strict=False))  # still paced
    assert InboundMessage.objects.filter(bot=noisy, status=MessageStatus.REPLIED, attempts=1).count() == 4


def test_the_deployed_worker_pool_waits_on_many_model_calls_at_once(client, bot, wecom, model, transactional_db):
    """A task holds its worker process for the whole model call, so the pool as deployed
    (no -c: CELERY_WORKER_CONCURRENCY's default, at least 8) is sized for waiting on
    models, not for the cores: eight users asking a slow model at once are all being
    answered at once, not two at a time."""
    model.delay = 2.0
    with CeleryWorker(concurrency=None):
        for n in range(8):
            deliver(client, bot, f"slow question {n}", 9500 + n, user=f"asker{n}")
        sends = wecom.wait_for(r"/message/send", 8, timeout=60)
    assert model.most_in_flight == 8, f"at most {model.most_in_flight} model calls were waited on at once"
    assert sorted(r.json()["text"]["content"] for r in sends) == sorted(
        f"[m1] slow question {n} (history=0)" for n in range(8)
    )


def test_the_worker_pool_size_comes_from_the_environment(transactional_db):
    with CeleryWorker(concurrency=None, extra_env={"CELERY_WORKER_CONCURRENCY": "3"}) as worker:
        banner = worker.output()
    assert "concurrency: 3 (prefork)" in banner
