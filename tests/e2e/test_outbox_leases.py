"""A task still working keeps its row however slow the model, and a dead task's row is
taken over once its lease lapses: a real Celery worker, the sweeper run against it, the
fake WeCom API and a fake model slower than OUTBOX_STUCK_AFTER."""

from __future__ import annotations

import base64
import os
import secrets
import time

import pytest
from django.utils import timezone

from bots.models import Bot
from channels_app.models import InboundMessage, MessageStatus
from channels_app.tasks import sweep_outbox
from routing.models import ModelBackend
from tests.e2e.conftest import CeleryWorker
from tests.e2e.test_dialog_wecom import deliver, wait_for_status
from tests.fakes.model import FakeModel
from tests.fakes.wecom import DEFAULT_CORP_ID, DEFAULT_CORP_SECRET, FakeWeCom

pytestmark = pytest.mark.slow

STUCK_AFTER = 2
MODEL_SECONDS = 6.0  # three leases long


@pytest.fixture
def wecom():
    with FakeWeCom() as fake:
        yield fake


@pytest.fixture
def model():
    with FakeModel() as fake:
        yield fake


@pytest.fixture
def bot(transactional_db, wecom, model, settings) -> Bot:
    # The sweeper runs here, in the test process: the same lease as the worker's.
    settings.OUTBOX_STUCK_AFTER = STUCK_AFTER
    backend = ModelBackend.objects.create(name="main", kind="openai", base_url=f"{model.url}/v1", model="m1")
    return Bot.objects.create(
        name="leases",
        platform="wecom",
        app_id=DEFAULT_CORP_ID,
        app_secret=DEFAULT_CORP_SECRET,
        token=secrets.token_urlsafe(12),
        encoding_aes_key=base64.b64encode(os.urandom(32)).decode()[:43],
        api_base_url=wecom.url,
        extra={"agent_id": 1000002},
        default_backend=backend,
    )


def test_a_task_slower_than_the_lease_keeps_its_row_and_answers_once(client, bot, wecom, model):
    model.delay = MODEL_SECONDS
    with CeleryWorker(extra_env={"OUTBOX_STUCK_AFTER": str(STUCK_AFTER)}):
        deliver(client, bot, "take your time", 6101)
        model.wait_for(r"/chat/completions", 1)
        ends = time.monotonic() + MODEL_SECONDS + 1
        swept = []
        while time.monotonic() < ends:  # the sweeper every half second, as an eager beat would
            swept.append(sweep_outbox.run()["processing"])
            time.sleep(0.5)
            row = InboundMessage.objects.get(platform_message_id="6101")
            if row.status == MessageStatus.PROCESSING:
                assert row.lease_until > timezone.now(), "the worker renews the lease while the model thinks"
        row = wait_for_status("6101", MessageStatus.REPLIED)
        time.sleep(1.0)  # room for a wrong second answer
    assert swept and set(swept) == {0}
    assert [m["text"]["content"] for m in wecom.sent] == ["[m1] take your time (history=0)"]
    assert len(model.received(r"/chat/completions")) == 1
    assert row.attempts == 1


def test_a_killed_workers_row_is_taken_over_once_its_lease_lapses(client, bot, wecom, model):
    model.delay = MODEL_SECONDS
    env = {"OUTBOX_STUCK_AFTER": str(STUCK_AFTER)}
    worker = CeleryWorker(extra_env=env).start()
    try:
        deliver(client, bot, "survive this", 6201)
        model.wait_for(r"/chat/completions", 1)
        worker.kill_hard()
        # Not at once: for all the sweeper can tell, the row still belongs to a live task.
        assert sweep_outbox.run()["processing"] == 0
    finally:
        worker.stop()
    model.delay = 0.0
    killed_at = time.monotonic()

    with CeleryWorker(extra_env=env):
        time.sleep(max(STUCK_AFTER + 0.3 - (time.monotonic() - killed_at), 0))
        assert sweep_outbox.run()["processing"] == 1
        row = wait_for_status("6201", MessageStatus.REPLIED)
        time.sleep(1.0)
    assert [m["text"]["content"] for m in wecom.sent] == ["[m1] survive this (history=0)"]
    assert row.attempts == 2
