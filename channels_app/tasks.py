"""The dialog task and the outbox sweeper, on the outbox's rows (channels_app/outbox.py).

Both keep the names they were registered under when they lived in routing/tasks.py
("routing.tasks.handle_message", "routing.tasks.sweep_outbox"): tasks queued by an
earlier release, and the beat schedule, still find them after an upgrade.

handle_message is idempotent on the row's status: whoever claims the row (a status
change done in one UPDATE) does the work; a duplicate delivery of the task, a sweeper
re-enqueue or a broker redelivery after a crash finds nothing to claim. The claim is a
lease its worker renews while the task runs (channels_app/lease.py): a row in processing is
taken over only once its lease has lapsed, that is, once its worker is gone. Every later
write of the task is fenced on the lease, so a task whose row was taken over stops.

Before each reply part is sent, the row records it as in flight; a task that finds a
part in flight knows a worker died in that part's send, sends it again with the same
idempotency key, and records whether the platform drops the repeat or the user may see
it twice (docs/delivery-guarantees.md).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

import httpx
from celery import shared_task
from django.db import InterfaceError, OperationalError
from django.utils import timezone
from prometheus_client import Counter, Histogram
from redis.exceptions import RedisError

from channels_app import lease, outbox
from channels_app.errors import TransportError
from channels_app.message import OutboundReply
from channels_app.models import InboundMessage, MessageStatus
from channels_app.outbound import split_reply
from channels_app.registry import adapter_for
from config.broker import queue_depth
from config.jsonlog import bind_log_context
from routing import configcache, ratelimit
from routing.backends import ModelError
from routing.context import ContextStore
from routing.dialog import answer, http_client
from routing.engine import NoBackend

logger = logging.getLogger("switchboard.dialog")

MESSAGES_DONE = Counter("switchboard_messages_total", "Messages by final status", ["platform", "bot", "status"])
SEND_RETRIES = Counter("switchboard_send_retries_total", "Reply sends retried", ["platform"])
SWEPT = Counter("switchboard_outbox_requeued_total", "Outbox rows re-queued by the sweeper", ["status"])
END_TO_END = Histogram(
    "switchboard_end_to_end_seconds",
    "From the callback's arrival to the last reply part sent",
    ["platform"],
    buckets=(0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300),
)
MODEL_SECONDS = Histogram(
    "switchboard_model_seconds",
    "Time the model backend took to answer, retries included",
    ["backend"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60),
)
DEFERRED = Counter(
    "switchboard_sends_deferred_total",
    "Reply parts whose send slot was far enough away that the task came back for it instead of waiting",
    ["platform"],
)
MODEL_RETRIES = Counter(
    "switchboard_model_retries_total", "Model requests repeated after a transient error", ["backend"]
)
RESENT = Counter(
    "switchboard_parts_resent_total",
    "Reply parts sent again after a send whose outcome was lost (a worker died in it, or it timed out); "
    "outcome: dropped_by_platform (the user sees it once) or possible_duplicate",
    ["platform", "outcome"],
)
TAKEN_OVER = Counter(
    "switchboard_tasks_taken_over_total", "Dialog tasks that stopped because another task took over their row"
)

# The fields the model's answer fills, saved with the first part's in-flight mark.
ANSWER_FIELDS = ("reply_text", "backend", "model_ms", "route")
# Send errors after which the platform may have delivered the part all the same: the
# request went out and no answer came back.
OUTCOME_UNKNOWN = (httpx.ReadTimeout, httpx.WriteTimeout, httpx.RemoteProtocolError)

# A wait for the bot's send slot longer than this is not slept in a worker process:
# the task comes back for its slot (a Celery countdown) and the pool serves other bots'
# messages meanwhile. A task back later than SLOT_LATE_TOLERANCE reserves a new slot.
DEFER_SLOT_AFTER = 1.0
SLOT_LATE_TOLERANCE = 0.05

# The sweeper's registered name from before it moved here (config/settings.py's beat
# schedule names it).
SWEEP_TASK_NAME = "routing.tasks.sweep_outbox"


def _taken_over(row: InboundMessage) -> str:
    # Our lease lapsed (the database was out of reach longer than OUTBOX_STUCK_AFTER)
    # and another task holds the row now: it finishes the message, this one must not.
    TAKEN_OVER.inc()
    logger.warning("message %s was taken over by another task after this one's lease lapsed; stopping", row.pk)
    return "taken over"


def _wait_for_slot(bot, held_slot: datetime | None) -> float | None:
    """Sleep until the next reply part may go out; the seconds to defer instead (the
    slot, reserved, is then that far away), or None once it may go out now.

    held_slot: the slot a deferred task came back for. Started on time, it is used
    (after sleeping off any early start); started late, it is given up for a new one,
    so that late starts cannot bunch sends beyond the bot's rate."""
    if held_slot is not None:
        early = (held_slot - timezone.now()).total_seconds()
        if early >= -SLOT_LATE_TOLERANCE:
            time.sleep(max(early, 0))
            return None
    return ratelimit.wait_for_slot(bot, defer_after=DEFER_SLOT_AFTER) or None


def _defer_to_slot(row: InboundMessage, wait: float, unsaved: tuple[str, ...] = ()) -> bool | None:
    """Leave the pool to other messages until the reserved slot: the row stays
    processing, marked with the slot and leased until OUTBOX_STUCK_AFTER past it (no
    worker renews it meanwhile), and the task comes back then. unsaved: fields of the
    row to save with it. False if it could not be queued (the caller sleeps instead:
    the slot is reserved either way); None if the row was taken over."""
    slot = timezone.now() + timedelta(seconds=wait)
    if not outbox.defer(row, slot, unsaved):
        return None
    try:
        handle_message.apply_async((row.pk,), {"slot_at": slot.isoformat()}, countdown=wait)
    except Exception as exc:  # the broker's errors vary by transport
        logger.warning("message %s could not be deferred to its send slot (%s); waiting for it here", row.pk, exc)
        outbox.resume(row)
        return False
    DEFERRED.labels(row.bot.platform).inc()
    return True


def _finish(row: InboundMessage, status: str, error: str = "", also: tuple[str, ...] = ()) -> bool:
    """Record the final status, with any other fields the caller changed on the row, and
    count it. False if another task had taken the row over."""
    if not outbox.finish(row, status, error, also):
        _taken_over(row)
        return False
    MESSAGES_DONE.labels(row.bot.platform, row.bot.name, status).inc()
    if status == MessageStatus.REPLIED:
        END_TO_END.labels(row.bot.platform).observe((row.replied_at - row.received_at).total_seconds())
    if status == MessageStatus.FAILED:
        logger.error("message %s of bot %s failed: %s", row.pk, row.bot.name, error)
    return True


def _note_resend(row: InboundMessage, adapter, index: int, parts: int) -> bool:
    """The part `index` is sent again after a send whose outcome was lost: count it.
    True on a platform that cannot drop the repeat (the row says so with the part's
    in-flight mark)."""
    platform = row.bot.platform
    if adapter.drops_repeated_sends:
        RESENT.labels(platform, "dropped_by_platform").inc()
        logger.info(
            "message %s: part %d of %d sent again after a lost send; %s drops the repeat",
            row.pk,
            index + 1,
            parts,
            platform,
        )
        return False
    RESENT.labels(platform, "possible_duplicate").inc()
    logger.warning(
        "message %s: part %d of %d sent again after a lost send; %s cannot drop a repeat, "
        "so the user may see this part twice",
        row.pk,
        index + 1,
        parts,
        platform,
    )
    return True


def _ask_model(row: InboundMessage, bot, rules, context: ContextStore) -> bool:
    """Fill the row's answer fields from the model (saved later, with the first part's
    in-flight mark). False if the message failed (recorded)."""
    try:
        result = answer(bot, row.chat_id, row.sender_id, row.chat_type, row.text, http_client(), context, rules)
    except (NoBackend, ModelError) as exc:
        _finish(row, MessageStatus.FAILED, str(exc))
        return False
    MODEL_SECONDS.labels(result.backend.name).observe(result.model_ms / 1000)
    MODEL_RETRIES.labels(result.backend.name).inc(result.completion.attempts - 1)
    row.reply_text = result.text
    row.backend = result.backend
    row.model_ms = result.model_ms
    row.route = result.selection.explanation[:300]
    return True


def _send_parts(
    row: InboundMessage, adapter, parts: list[str], held_slot: datetime | None, unsaved: tuple[str, ...]
) -> str | None:
    """Send the parts not sent yet, each marked in flight on the row first. None once
    all are sent; otherwise what the task returns ("deferred", "taken over")."""
    bot = row.bot
    lost_part = row.part_in_flight  # a send a dead worker began, or one that timed out
    reply_context = (row.raw or {}).get("reply_context", {})
    # Unique beyond this database (a restore or a second install reuses primary keys),
    # or Feishu would drop a real reply as a repeat; a re-send from the console of a
    # reply delivered before gets keys of its own, or it would be dropped the same way.
    key_prefix = f"sb-{bot.uuid.hex[:12]}-{row.pk}-"
    resend = row.replied_at is not None
    key_suffix = f"-r{int(row.replied_at.timestamp())}" if resend else ""
    for index in range(row.parts_sent, len(parts)):
        defer_for = _wait_for_slot(bot, held_slot)
        held_slot = None
        if defer_for is not None:
            deferred = _defer_to_slot(row, defer_for, unsaved)
            if deferred is None:
                return _taken_over(row)
            if deferred:
                return "deferred"
            unsaved = ()
            time.sleep(defer_for)
        repeat = index == lost_part and _note_resend(row, adapter, index, len(parts))
        if not outbox.mark_in_flight(row, index, unsaved, possible_duplicate=repeat):
            return _taken_over(row)
        unsaved = ()
        adapter.send(
            OutboundReply(
                chat_id=row.chat_id,
                chat_type=row.chat_type,
                sender_id=row.sender_id,
                text=parts[index],
                reply_context=reply_context,
                idempotency_key=f"{key_prefix}{index}{key_suffix}",
                part=index + 1,
                parts=len(parts),
                resend=resend,
            ),
            http_client(),
        )
        if not outbox.mark_sent(row, index, len(parts)):
            return _taken_over(row)
    return None


@shared_task(
    name=lease.TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=3, ignore_result=True
)
def handle_message(self, message_id: int, acked_ms: float | None = None, slot_at: str | None = None) -> str:
    bind_log_context(message_id=message_id)
    held_slot = datetime.fromisoformat(slot_at) if slot_at else None
    try:
        row = outbox.claim(message_id, acked_ms, self.request.id, held_slot)
    except (OperationalError, InterfaceError) as exc:
        # Most often a kept connection that died while idle (PostgreSQL restarted):
        # Django replaces it after this task; the row is untouched, so try again soon.
        raise self.retry(countdown=1, exc=exc) from None
    if row is None:
        return "not claimed"
    first_delivery = row.replied_at is None
    bot, rules = configcache.bot_and_rules(row.bot_id)
    row.bot = bot
    bind_log_context(bot=bot.uuid, platform=bot.platform)
    adapter_class = adapter_for(bot.platform)
    if adapter_class is None:
        _finish(row, MessageStatus.FAILED, f"no adapter for platform {bot.platform}")
        return "failed"
    context = ContextStore()
    unsaved: tuple[str, ...] = ()
    if not row.reply_text:
        if not _ask_model(row, bot, rules, context):
            return "failed"
        unsaved = ANSWER_FIELDS

    adapter = adapter_class(bot)
    parts = [p for p in split_reply(row.reply_text, adapter.max_reply_length, adapter.length_unit) if p.strip()]
    started = time.perf_counter()
    try:
        stopped = _send_parts(row, adapter, parts, held_slot, unsaved)
    except (TransportError, RedisError) as exc:
        permanent = isinstance(exc, TransportError) and exc.permanent
        if permanent or self.request.retries >= self.max_retries:
            _finish(row, MessageStatus.FAILED, f"send: {exc}", also=ANSWER_FIELDS)
            return "failed"
        SEND_RETRIES.labels(bot.platform).inc()
        outbox.release_for_retry(
            row,
            f"send attempt {self.request.retries + 1}: {exc}",
            outcome_unknown=isinstance(exc.__cause__, OUTCOME_UNKNOWN),
        )
        retry_after = getattr(exc, "retry_after", None)
        # Without slot_at: the row is "received" again, and the retry reserves its own slot.
        raise self.retry(countdown=retry_after or 2**self.request.retries, kwargs={}) from None
    if stopped is not None:
        return stopped
    row.send_ms = (time.perf_counter() - started) * 1000
    if not _finish(row, MessageStatus.REPLIED, also=("send_ms", "parts_sent")):
        return "taken over"
    if first_delivery:
        # A reply re-sent from the console is already part of the conversation.
        context.append(bot, row.chat_id, row.sender_id, row.text, row.reply_text)
    return "replied"


@shared_task(name=SWEEP_TASK_NAME, ignore_result=True)
def sweep_outbox() -> dict[str, int]:
    """Re-queue messages a lost broker message or a dead worker left behind, and purge
    finished rows past retention."""
    now = timezone.now()
    counts = {}
    for label, ids in (("received", outbox.lost_from_queue(now, queue_depth())), ("processing", outbox.lapsed(now))):
        for message_id in ids:
            handle_message.delay(message_id)
        SWEPT.labels(label).inc(len(ids))
        counts[label] = len(ids)
    counts["purged"] = outbox.purge_finished(now)
    if counts["received"] or counts["processing"]:
        logger.warning("outbox sweeper re-queued %s", counts)
    return counts
