"""The outbox sweeper re-queues what a lost task or a dead worker left behind and purges
finished rows past retention."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from kombu import Connection

from channels_app.models import InboundMessage, MessageStatus
from channels_app.tasks import handle_message, sweep_outbox


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

    def row(msg_id: str, status: str, age: timedelta, lease_left: timedelta | None = None) -> InboundMessage:
        """A row received `age` ago; in processing, leased until `lease_left` from now
        (negative: its lease lapsed that long ago)."""
        message = InboundMessage.objects.create(bot=bot, platform_message_id=msg_id, status=status)
        InboundMessage.objects.filter(pk=message.pk).update(
            received_at=now - age,
            started_at=now - age if status == MessageStatus.PROCESSING else None,
            lease_until=now + lease_left if lease_left is not None else None,
        )
        return message

    return row


def test_sweeper_requeues_lost_and_dead_messages_only(rows, settings):
    queued_message_ids(settings)  # start from an empty queue
    lost = rows("lost", MessageStatus.RECEIVED, timedelta(minutes=5))
    rows("fresh", MessageStatus.RECEIVED, timedelta(seconds=5))
    dead = rows("dead", MessageStatus.PROCESSING, timedelta(minutes=20), lease_left=-timedelta(seconds=1))
    # Started long ago, but its worker still renews the lease: a slow model, not a dead task.
    rows("working", MessageStatus.PROCESSING, timedelta(minutes=20), lease_left=timedelta(seconds=30))
    rows("done", MessageStatus.REPLIED, timedelta(minutes=20))

    counts = sweep_outbox.run()
    assert (counts["received"], counts["processing"]) == (1, 1)
    assert sorted(queued_message_ids(settings)) == sorted([lost.pk, dead.pk])


def _backlog(rows, count: int) -> list[InboundMessage]:
    """`count` received rows, the oldest first, each with its task waiting in the queue."""
    waiting = [rows(f"queued-{n}", MessageStatus.RECEIVED, timedelta(minutes=10 - n)) for n in range(count)]
    for row in waiting:
        handle_message.delay(row.pk)
    return waiting


def test_a_backlog_still_waiting_in_the_queue_is_not_queued_again(rows, settings):
    queued_message_ids(settings)
    waiting = _backlog(rows, 5)  # older than OUTBOX_RECEIVED_AFTER, and still in line

    assert sweep_outbox.run()["received"] == 0
    assert sweep_outbox.run()["received"] == 0
    assert sorted(queued_message_ids(settings)) == sorted(row.pk for row in waiting)


def test_rows_whose_queue_entries_were_lost_are_queued_again(rows, settings):
    queued_message_ids(settings)
    waiting = _backlog(rows, 5)
    queued_message_ids(settings)  # the queue is gone (a broker restarted without its data)

    assert sweep_outbox.run()["received"] == 5
    assert sorted(queued_message_ids(settings)) == sorted(row.pk for row in waiting)


def test_a_row_never_queued_behind_a_backlog_is_queued_once_the_backlog_drains(rows, settings):
    queued_message_ids(settings)
    waiting = _backlog(rows, 3)
    never_queued = rows("broker-down", MessageStatus.RECEIVED, timedelta(minutes=1))  # the publish failed

    # Three waiting messages for four received rows: one row is not in the queue. Which
    # one the count cannot tell; the oldest gets a second message, once.
    assert sweep_outbox.run()["received"] == 1
    assert sweep_outbox.run()["received"] == 0
    assert sorted(queued_message_ids(settings)) == sorted([*(row.pk for row in waiting), waiting[0].pk])

    # The worker answers the backlog; the row that was never queued is queued now.
    InboundMessage.objects.filter(pk__in=[row.pk for row in waiting]).update(status=MessageStatus.REPLIED)
    assert sweep_outbox.run()["received"] == 1
    assert queued_message_ids(settings) == [never_queued.pk]


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
