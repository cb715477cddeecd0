"""WeCom sends a callback again, unchanged (same nonce, same body), when our answer to it
was late. Under a real gunicorn (two sync workers, as deployed) with a Celery worker and
the fake WeCom API: whether the copy arrives after the message was recorded or while the
first request still waits for PostgreSQL, both requests get WeCom's normal empty 200,
there is one row, the bot answers once, and the copy is counted as a re-delivery and
logged at INFO, not refused as a replay."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from django.db import connection
from prometheus_client.parser import text_string_to_metric_families

from channels_app.models import InboundMessage, MessageStatus
from tests.database_locks import outbox_inserts_held
from tests.faults.conftest import Gunicorn, post, signed_callback
from tests.processes import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def web(bot, tmp_path) -> Iterator[Gunicorn]:
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    with Gunicorn(workers=2, PROMETHEUS_MULTIPROC_DIR=str(metrics)) as web:
        yield web


def callbacks(web: Gunicorn) -> dict[str, float]:
    """switchboard_callbacks_total for wecom by outcome, as gunicorn's /metrics reports it."""
    body = httpx.get(f"{web.url}/metrics", timeout=5).text
    return {
        sample.labels["outcome"]: sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
        if sample.name == "switchboard_callbacks_total" and sample.labels.get("platform") == "wecom"
    }


def callback_log(web: Gunicorn) -> list[dict]:
    """What the callback view logged (JSON lines of the gunicorn workers)."""
    records = []
    for line in web.log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("logger") == "switchboard.callbacks":
                records.append(record)
    return records


def answered_once(wecom, msg_id: str, text: str) -> None:
    [sent] = wecom.wait_for(r"/message/send", 1)
    assert sent.json()["text"]["content"] == f"[m1] {text} (history=0)"
    wait_until(
        lambda: InboundMessage.objects.get(platform_message_id=msg_id).status == MessageStatus.REPLIED,
        timeout=20,
        what="message replied",
    )
    time.sleep(1.0)  # room for a wrong second reply to arrive
    assert len(wecom.received(r"/message/send")) == 1
    assert InboundMessage.objects.filter(platform_message_id=msg_id).count() == 1


def test_the_copy_of_a_recorded_request_gets_the_normal_answer_and_no_second_reply(bot, wecom, web, celery_worker):
    request = signed_callback(bot, "are you there?", 9101)
    before = callbacks(web)

    first, again = post(web.url, *request), post(web.url, *request)

    assert [(r.status_code, r.content) for r in (first, again)] == [(200, b""), (200, b"")]
    answered_once(wecom, "9101", "are you there?")
    after = callbacks(web)
    assert after.get("accepted", 0) == before.get("accepted", 0) + 1
    assert after.get("redelivered", 0) == before.get("redelivered", 0) + 1
    assert [(r["level"], "came again with the same message" in r["message"]) for r in callback_log(web)] == [
        ("INFO", True)
    ]


def test_a_copy_sent_while_the_first_waits_for_the_database_gets_the_normal_answer(bot, wecom, web, celery_worker):
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (DATABASE_URL=postgres://...): the database is slowed with a table lock")
    request = signed_callback(bot, "slow database", 9201)
    before = callbacks(web)

    with ThreadPoolExecutor(2) as pool:
        with outbox_inserts_held() as waiting:
            first = pool.submit(post, web.url, *request)
            wait_until(
                lambda: waiting() == 1, timeout=10, what="the first request waiting at its INSERT", interval=0.05
            )
            again = pool.submit(post, web.url, *request)  # WeCom's copy, on the other worker
            wait_until(lambda: waiting() == 2, timeout=10, what="the copy waiting at its INSERT", interval=0.05)
        responses = [first.result(timeout=10), again.result(timeout=10)]

    assert [(r.status_code, r.content) for r in responses] == [(200, b""), (200, b"")]
    answered_once(wecom, "9201", "slow database")
    after = callbacks(web)
    assert after.get("accepted", 0) == before.get("accepted", 0) + 1
    # The copy that met the row is a re-delivery, whichever of the two claimed the nonce first.
    repeats = ("redelivered", "duplicate")
    assert sum(after.get(o, 0) for o in repeats) == sum(before.get(o, 0) for o in repeats) + 1
    assert [r for r in callback_log(web) if r["level"] != "INFO"] == []
