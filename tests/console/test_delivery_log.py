"""The delivery log: InboundMessage rows with filters, timings and errors, and the two
actions that put a message back into the outbox (replay a failed message, re-send a
reply), audited."""

from __future__ import annotations

import base64
import json
import re
from datetime import timedelta

import pytest
import redis
from auditlog.models import LogEntry
from django.conf import settings
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.test import Client
from django.utils import timezone

from bots.otp_devices import AuthenticatorDevice
from channels_app.models import InboundMessage, MessageStatus
from tests.fixtures import PASSWORD, sign_in

CHANGELIST = "/admin/channels_app/inboundmessage/"


@pytest.fixture
def queue():
    """This test run's Celery queue in Redis (the real broker), emptied around the test."""
    connection = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    name = settings.CELERY_TASK_DEFAULT_QUEUE
    connection.delete(name)
    yield lambda: [_task(raw) for raw in reversed(connection.lrange(name, 0, -1))]
    connection.delete(name)


def _task(raw: bytes) -> tuple[str, list]:
    message = json.loads(raw)
    args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    return message["headers"]["task"], args


@pytest.fixture
def rows(make_bot, backend):
    wecom = make_bot(name="helpdesk", platform="wecom")
    feishu = make_bot(name="lark", platform="feishu")
    failed = InboundMessage.objects.create(
        bot=wecom,
        platform_message_id="m-failed",
        chat_id="zhangsan",
        sender_id="zhangsan",
        text="where is my invoice",
        status=MessageStatus.FAILED,
        attempts=1,
        error="model: fake-model answered HTTP 503",
        route="rule helpdesk #10: keyword invoice",
        backend=backend,
        acked_ms=3.2,
        model_ms=812.0,
    )
    replied = InboundMessage.objects.create(
        bot=feishu,
        platform_message_id="m-replied",
        chat_id="oc_1",
        sender_id="ou_1",
        text="hello",
        status=MessageStatus.REPLIED,
        attempts=1,
        reply_text="hi there",
        parts_sent=1,
        backend=backend,
        acked_ms=2.0,
        model_ms=120.0,
        send_ms=45.0,
    )
    InboundMessage.objects.filter(pk=replied.pk).update(
        started_at=replied.received_at, replied_at=replied.received_at + timedelta(milliseconds=900)
    )
    unsent = InboundMessage.objects.create(
        bot=wecom,
        platform_message_id="m-send-failed",
        chat_id="lisi",
        sender_id="lisi",
        text="help",
        status=MessageStatus.FAILED,
        attempts=4,
        error="send: WeCom message/send refused: errcode 45009",
        reply_text="the answer",
        parts_sent=0,
        backend=backend,
    )
    waiting = InboundMessage.objects.create(bot=wecom, platform_message_id="m-waiting", text="later")
    return {"failed": failed, "replied": replied, "unsent": unsent, "waiting": waiting}


def listed(response) -> set[str]:
    return {row.platform_message_id for row in response.context["cl"].result_list}


def act(console, action: str, *rows_: InboundMessage, **extra):
    return console.post(CHANGELIST, {"action": action, "_selected_action": [r.pk for r in rows_]}, **extra)


def test_the_log_filters_by_bot_platform_status_and_date(console, rows):
    assert listed(console.get(CHANGELIST)) == {"m-failed", "m-replied", "m-send-failed", "m-waiting"}
    assert listed(console.get(CHANGELIST, {"platform": "feishu"})) == {"m-replied"}
    assert listed(console.get(CHANGELIST, {"status__exact": "failed"})) == {"m-failed", "m-send-failed"}
    assert listed(console.get(CHANGELIST, {"bot__id__exact": rows["failed"].bot_id})) == {
        "m-failed",
        "m-send-failed",
        "m-waiting",
    }
    # What the "By received at" filter's "Today" link asks for.
    today = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    assert len(listed(console.get(CHANGELIST, {"received_at__gte": str(today)}))) == 4
    assert listed(console.get(CHANGELIST, {"received_at__gte": str(today + timedelta(days=1))})) == set()
    page = console.get(CHANGELIST).content.decode()
    for label in ["By platform", "Feishu / Lark", "By status", "By bot", "By received at"]:
        assert label in page


def test_a_message_page_shows_timings_backend_route_and_error(console, rows):
    listing = console.get(CHANGELIST).content.decode()
    assert "ack 2 · model 120 · send 45" in listing and "ack 3 · model 812" in listing
    assert "model: fake-model answered HTTP 503" in listing
    page = console.get(f"{CHANGELIST}{rows['failed'].pk}/change/").content.decode()
    for shown in [
        "model: fake-model answered HTTP 503",
        "rule helpdesk #10: keyword invoice",
        "echo",
        "812.0",
        "where is my invoice",
        "WeCom",
    ]:
        assert shown in page, shown
    replied = console.get(f"{CHANGELIST}{rows['replied'].pk}/change/").content.decode()
    assert re.search(r"End to end \(ms\):</label>\s*<div class=\"readonly\">900</div>", replied), replied


def test_replaying_a_failed_message_puts_it_back_in_the_outbox(
    console, staff_user, rows, queue, django_capture_on_commit_callbacks
):
    failed, unsent = rows["failed"], rows["unsent"]
    with django_capture_on_commit_callbacks(execute=True):
        response = act(console, "replay_messages", failed, unsent, REMOTE_ADDR="10.3.3.3")
    assert response.status_code == 302
    for row in (failed, unsent):
        row.refresh_from_db()
        # Replaying asks the model again: an earlier reply (here: one that could not be sent) is dropped.
        assert (row.status, row.error, row.reply_text, row.parts_sent) == (MessageStatus.RECEIVED, "", "", 0)
    assert sorted(queue()) == sorted(
        [("routing.tasks.handle_message", [failed.pk]), ("routing.tasks.handle_message", [unsent.pk])]
    )
    assert [str(m) for m in get_messages(response.wsgi_request)] == ["Replaying 2 messages: queued for the worker."]

    [entry] = LogEntry.objects.filter(object_pk=str(failed.pk), content_type__model="inboundmessage")
    assert entry.actor == staff_user and entry.remote_addr == "10.3.3.3"
    assert entry.additional_data == {"console_action": "replay"}
    assert entry.changes_dict["status"] == ["failed", "received"]
    assert entry.changes_dict["error"] == ["model: fake-model answered HTTP 503", ""]


def test_only_failed_messages_are_replayed(console, rows, queue, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = act(console, "replay_messages", rows["replied"], rows["waiting"])
    rows["replied"].refresh_from_db()
    assert rows["replied"].status == MessageStatus.REPLIED and rows["replied"].reply_text == "hi there"
    assert queue() == []
    [warning] = [str(m) for m in get_messages(response.wsgi_request)]
    assert warning.startswith("Skipped #")
    assert "(replied)" in warning and "(received)" in warning
    assert warning.endswith("only failed messages can be replayed.")
    assert not LogEntry.objects.filter(content_type__model="inboundmessage").exists()


def test_resending_keeps_the_reply_and_sends_it_again(console, rows, queue, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        act(console, "resend_replies", rows["unsent"], rows["replied"], rows["failed"])
    rows["unsent"].refresh_from_db()
    rows["replied"].refresh_from_db()
    rows["failed"].refresh_from_db()
    assert (rows["unsent"].status, rows["unsent"].reply_text, rows["unsent"].parts_sent, rows["unsent"].error) == (
        MessageStatus.RECEIVED,
        "the answer",
        0,
        "",
    )
    assert (rows["replied"].status, rows["replied"].reply_text, rows["replied"].parts_sent) == (
        MessageStatus.RECEIVED,
        "hi there",
        0,
    )
    # A failed message without a reply has nothing to re-send: replaying is the way.
    assert rows["failed"].status == MessageStatus.FAILED
    assert sorted(queue()) == sorted(
        [("routing.tasks.handle_message", [rows["unsent"].pk]), ("routing.tasks.handle_message", [rows["replied"].pk])]
    )
    entries = LogEntry.objects.filter(content_type__model="inboundmessage")
    assert {e.additional_data["console_action"] for e in entries} == {"resend"} and entries.count() == 2


def test_a_message_a_worker_took_meanwhile_is_left_alone(console, rows, queue, django_capture_on_commit_callbacks):
    failed = rows["failed"]
    InboundMessage.objects.filter(pk=failed.pk).update(status=MessageStatus.PROCESSING)
    with django_capture_on_commit_callbacks(execute=True):
        act(console, "replay_messages", failed)
    failed.refresh_from_db()
    assert failed.status == MessageStatus.PROCESSING and queue() == []


def test_viewers_see_the_log_but_cannot_requeue(rows, django_user_model, queue):
    viewer = django_user_model.objects.create_user(username="viv", password=PASSWORD, is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_inboundmessage"))
    client = Client()
    sign_in(client, "viv", AuthenticatorDevice.objects.create(user=viewer, name="phone", confirmed=True))
    page = client.get(CHANGELIST)
    assert page.status_code == 200 and "where is my invoice" in page.content.decode()
    assert "replay_messages" not in page.content.decode()
    client.post(CHANGELIST, {"action": "replay_messages", "_selected_action": [rows["failed"].pk]})
    rows["failed"].refresh_from_db()
    assert rows["failed"].status == MessageStatus.FAILED and queue() == []


def test_the_log_stays_read_only(console, rows):
    assert console.get(f"{CHANGELIST}add/").status_code == 403
    response = console.post(f"{CHANGELIST}{rows['failed'].pk}/change/", {"status": "replied"})
    assert response.status_code == 403
    rows["failed"].refresh_from_db()
    assert rows["failed"].status == MessageStatus.FAILED
