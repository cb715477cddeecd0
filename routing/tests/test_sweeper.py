"""The outbox sweeper re-queues what a lost task or a dead worker left behind and purges
finished rows past retention."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from kombu import Connection

from channels_app.models import InboundMessage, MessageStatus
from routing.tasks import sweep_outbox


def queued_message_ids(settings) -> list[int]:
    """The handle_message tasks waiting in this run's queue (read without consuming them
    for good: each is put back by not acknowledging it)."""
    ids = []
    with Connection(settings.CELERY_BROKER_URL) as conn:
        queue = conn.SimpleQueue(settings.CELERY_TASK_DEFAULT_QUEUE)
        while True:
            try:
                message = queue.get(block=True, timeout=0.2)
            except queue.Empty:
                break
            ids.append(message.payload[0][0])
            message.ack()
        queue.close()
    return ids


@pytest.fixture
def rows(make_bot):
    bot = make_bot()
    now = timezone.now()

    def row(msg_id: str, status: str, age: timedelta, started_age: timedelta | None = None) -> InboundMessage:
        message = InboundMessage.objects.create(bot=bot, platform_message_id=msg_id, status=status)
        InboundMessage.objects.filter(pk=message.pk).update(
            received_at=now - age, started_at=(now - started_age) if started_age else None
        )
        return message

    return row


def test_sweeper_requeues_lost_and_stuck_messages_only(rows, settings):
    queued_message_ids(settings)  # start from an empty queue
    lost = rows("lost", MessageStatus.RECEIVED, timedelta(minutes=5))
    rows("fresh", MessageStatus.RECEIVED, timedelta(seconds=5))
    stuck = rows("stuck", MessageStatus.PROCESSING, timedelta(minutes=20), started_age=timedelta(minutes=10))
    rows("working", MessageStatus.PROCESSING, timedelta(minutes=20), started_age=timedelta(seconds=30))
    rows("done", MessageStatus.REPLIED, timedelta(minutes=20))

    counts = sweep_outbox.run()
    assert (counts["received"], counts["processing"]) == (1, 1)
    assert sorted(queued_message_ids(settings)) == sorted([lost.pk, stuck.pk])


def test_sweeper_purges_finished_rows_past_retention(rows, settings):
    settings.OUTBOX_RETENTION_DAYS = 30
    rows("old-replied", MessageStatus.REPLIED, timedelta(days=31))
    rows("old-failed", MessageStatus.FAILED, timedelta(days=31))
    rows("recent-replied", MessageStatus.REPLIED, timedelta(days=29))
    old_waiting = rows("old-waiting", MessageStatus.RECEIVED, timedelta(days=31))

    assert sweep_outbox.run()["purged"] == 2
    left = set(InboundMessage.objects.values_list("platform_message_id", flat=True))
    # An unanswered message is never purged, however old: it is re-queued instead.
    assert left == {"recent-replied", "old-waiting"}
    assert old_waiting.pk in queued_message_ids(settings)
