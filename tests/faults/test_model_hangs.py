"""The model backend accepts the request and never answers: the platform got its answer
at once, the call times out, is retried, and the row ends failed with the reason."""

from __future__ import annotations

import time

import pytest

from channels_app.models import InboundMessage, MessageStatus
from routing.models import ModelBackend
from tests.faults.conftest import signed_callback
from tests.processes import wait_until

pytestmark = pytest.mark.slow


def test_a_hanging_model_times_out_retries_and_fails_with_the_reason(client, bot, wecom, model, celery_worker):
    ModelBackend.objects.filter(pk=bot.default_backend_id).update(timeout=0.5)
    model.delay = 20.0
    path, body = signed_callback(bot, "hello?", 9001)
    started = time.monotonic()
    response = client.post(path, body, content_type="text/xml")
    assert response.status_code == 200 and time.monotonic() - started < 1.0, "the callback must not wait"

    row = wait_until(
        lambda: InboundMessage.objects.filter(platform_message_id="9001", status=MessageStatus.FAILED).first(),
        timeout=40,
        what="row failed",
    )
    assert "main" in row.error and "4 attempts" in row.error and "time" in row.error.lower(), row.error
    assert len(model.received(r"/chat/completions")) == 4  # one call and three retries
    assert wecom.received(r"/message/send") == []
