"""The dialog task and the outbox sweeper.

handle_message is idempotent on the row's status: whoever claims the row (a status
change done in one UPDATE) does the work; a duplicate delivery of the task, a sweeper
re-enqueue or a broker redelivery after a crash finds nothing to claim.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from functools import cache

import httpx
from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection
from django.utils import timezone
from prometheus_client import Counter, Histogram
from redis.exceptions import RedisError

from channels_app.errors import TransportError
from channels_app.message import OutboundReply
from channels_app.models import InboundMessage, MessageStatus
from channels_app.outbound import split_reply
from channels_app.registry import adapter_for
from config.jsonlog import bind_log_context
from routing import configcache, ratelimit
from routing.backends import ModelError
from routing.context import ContextStore
from routing.dialog import answer
from routing.engine import NoBackend

logger = logging.getLogger("switchboard.dialog")

MESSAGES_DONE = Counter(
    "switchboard_messages_total", "Messages by final status", ["platform", "bot", "status"]
)
SEND_RETRIES = Counter("switchboard_send_retries_total", "Reply sends retried", ["platform"])
SWEPT = Counter("switchboard_outbox_requeued_total", "Outbox rows re-queued by the sweeper", ["status"])
END_TO_END = Histogram(
    "switchboard_end_to_end_seconds", "From the callback's arrival to the last reply part sent", ["platform"],
    buckets=(0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300),
)
MODEL_SECONDS = Histogram(
    "switchboard_model_seconds", "Time the model backend took to answer, retries included", ["backend"],
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

# A wait for the bot's send slot longer than this is not slept in a worker process:
# the task comes back for its slot (a Celery countdown) and the pool serves other bots'
# messages meanwhile. A task back later than SLOT_LATE_TOLERANCE reserves a new slot.
DEFER_SLOT_AFTER = 1.0
SLOT_LATE_TOLERANCE = 0.05

_http: httpx.Client | None = None


def http_client() -> httpx.Client:
    """One pooled client per worker process (created after the fork)."""
    global _http
    if _http is None:
        _http = httpx.Client(timeout=httpx.Timeout(15.0, connect=5.0), follow_redirects=False)
    return _http


@cache
def _claim_sql(deferred: bool = False) -> str:
    quote = connection.ops.quote_name
    table = quote(InboundMessage._meta.db_table)
    status, started_at, attempts, acked_ms = (quote(c) for c in ("status", "started_at", "attempts", "acked_ms"))
    # Only the model's own table and column names go into the text; values are parameters.
    if deferred:  # back for the send slot it reserved: the row waits, processing, until then
        return (f"UPDATE {table} SET {started_at} = %s "  # noqa: S608
                f"WHERE {quote('id')} = %s AND {status} = %s AND {started_at} = %s RETURNING *")
    return (f"UPDATE {table} SET {status} = %s, {started_at} = %s, {attempts} = {attempts} + 1, "  # noqa: S608
            f"{acked_ms} = COALESCE(%s, {acked_ms}) "
            f"WHERE {quote('id')} = %s AND ({status} = %s OR ({status} = %s AND {started_at} < %s)) RETURNING *")


def _claim(message_id: int, acked_ms: float | None, slot: datetime | None = None) -> InboundMessage | None:
    """Take the row (received, or processing but stuck) and load it: one statement, so
    two workers handed the same message cannot both take it. With slot: take back the
    row this task deferred to that send slot. None: not ours to do."""
    now = timezone.now()
    adapt = connection.ops.adapt_datetimefield_value
    if slot is not None:
        params = [adapt(now), message_id, MessageStatus.PROCESSING, adapt(slot)]
    else:
        stuck_before = now - timedelta(seconds=settings.OUTBOX_STUCK_AFTER)
        params = [MessageStatus.PROCESSING, adapt(now), acked_ms, message_id,
                  MessageStatus.RECEIVED, MessageStatus.PROCESSING, adapt(stuck_before)]
    rows = list(InboundMessage.objects.raw(_claim_sql(deferred=slot is not None), params))
    return rows[0] if rows else None


@cache
def _update_sql(fields: tuple[str, ...]) -> tuple[str, tuple]:
    quote = connection.ops.quote_name
    meta = InboundMessage._meta
    model_fields = tuple(meta.get_field(name) for name in fields)
    assignments = ", ".join(f"{quote(field.column)} = %s" for field in model_fields)
    # Only the model's own table and column names go into the text; values are parameters.
    return (f"UPDATE {quote(meta.db_table)} SET {assignments} WHERE {quote(meta.pk.column)} = %s",  # noqa: S608
            model_fields)


def _save(row: InboundMessage, *fields: str) -> None:
    """row.save(update_fields=fields) with the statement built once per set of fields:
    the ORM compiled it anew for every message, a quarter of the task's own CPU."""
    sql, model_fields = _update_sql(fields)
    params = [field.get_db_prep_save(getattr(row, field.attname), connection) for field in model_fields]
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, row.pk])


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


def _defer_to_slot(row: InboundMessage, wait: float) -> bool:
    """Leave the pool to other messages until the reserved slot: the row stays
    processing, marked with the slot (so the sweeper leaves it alone until
    OUTBOX_STUCK_AFTER past it), and the task comes back then. False if it could not
    be queued (the caller sleeps instead: the slot is reserved either way)."""
    slot = timezone.now() + timedelta(seconds=wait)
    InboundMessage.objects.filter(pk=row.pk).update(started_at=slot, parts_sent=row.parts_sent)
    try:
        handle_message.apply_async((row.pk,), {"slot_at": slot.isoformat()}, countdown=wait)
    except Exception as exc:  # noqa: BLE001 (the broker's errors vary by transport)
        logger.warning("message %s could not be deferred to its send slot (%s); waiting for it here", row.pk, exc)
        InboundMessage.objects.filter(pk=row.pk).update(started_at=timezone.now())
        return False
    DEFERRED.labels(row.bot.platform).inc()
    return True


def _finish(row: InboundMessage, status: str, error: str = "", also: tuple[str, ...] = ()) -> None:
    """Record the final status, with any other fields the caller changed on the row."""
    row.status = status
    row.error = error[:2000]
    fields = ("status", "error", *also)
    if status == MessageStatus.REPLIED:
        row.replied_at = timezone.now()
        fields += ("replied_at",)
    _save(row, *fields)
    MESSAGES_DONE.labels(row.bot.platform, row.bot.name, status).inc()
    if status == MessageStatus.REPLIED:
        END_TO_END.labels(row.bot.platform).observe((row.replied_at - row.received_at).total_seconds())
    if status == MessageStatus.FAILED:
        logger.error("message %s of bot %s failed: %s", row.pk, row.bot.name, error)


def _release_for_retry(row: InboundMessage, error: str) -> None:
    # Back to "received" so the retried task (or the sweeper) can claim it again.
    InboundMessage.objects.filter(pk=row.pk).update(status=MessageStatus.RECEIVED, error=error[:2000])


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=3, ignore_result=True)
def handle_message(self, message_id: int, acked_ms: float | None = None, slot_at: str | None = None) -> str:
    bind_log_context(message_id=message_id)
    held_slot = datetime.fromisoformat(slot_at) if slot_at else None
    try:
        row = _claim(message_id, acked_ms, held_slot)
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

    if not row.reply_text:
        try:
            result = answer(bot, row.chat_id, row.sender_id, row.chat_type, row.text, http_client(), context,
                            rules)
        except (NoBackend, ModelError) as exc:
            _finish(row, MessageStatus.FAILED, str(exc))
            return "failed"
        MODEL_SECONDS.labels(result.backend.name).observe(result.model_ms / 1000)
        MODEL_RETRIES.labels(result.backend.name).inc(result.completion.attempts - 1)
        row.reply_text = result.text
        row.backend = result.backend
        row.model_ms = result.model_ms
        row.route = result.selection.explanation[:300]
        _save(row, "reply_text", "backend", "model_ms", "route")

    adapter = adapter_class(bot)
    parts = [p for p in split_reply(row.reply_text, adapter.max_reply_length, adapter.length_unit) if p.strip()]
    reply_context = (row.raw or {}).get("reply_context", {})
    started = time.perf_counter()
    try:
        for index in range(row.parts_sent, len(parts)):
            defer_for = _wait_for_slot(bot, held_slot)
            held_slot = None
            if defer_for is not None:
                if _defer_to_slot(row, defer_for):
                    return "deferred"
                time.sleep(defer_for)
            adapter.send(
                OutboundReply(
                    chat_id=row.chat_id, chat_type=row.chat_type, sender_id=row.sender_id, text=parts[index],
                    reply_context=reply_context,
                    # Unique beyond this database (a restore or a second install reuses
                    # primary keys), or Feishu would drop a real reply as a repeat.
                    idempotency_key=f"sb-{bot.uuid.hex[:12]}-{row.pk}-{index}",
                    part=index + 1,
                    parts=len(parts),
                ),
                http_client(),
            )
            row.parts_sent = index + 1
            if row.parts_sent < len(parts):  # the last one is saved with the final status
                _save(row, "parts_sent")
    except (TransportError, RedisError) as exc:
        permanent = isinstance(exc, TransportError) and exc.permanent
        if permanent or self.request.retries >= self.max_retries:
            _finish(row, MessageStatus.FAILED, f"send: {exc}")
            return "failed"
        SEND_RETRIES.labels(bot.platform).inc()
        _release_for_retry(row, f"send attempt {self.request.retries + 1}: {exc}")
        retry_after = getattr(exc, "retry_after", None)
        # Without slot_at: the row is "received" again, and the retry reserves its own slot.
        raise self.retry(countdown=retry_after or 2 ** self.request.retries, kwargs={}) from None
    row.send_ms = (time.perf_counter() - started) * 1000
    if first_delivery:
        # A reply re-sent from the console is already part of the conversation.
        context.append(bot, row.chat_id, row.sender_id, row.text, row.reply_text)
    _finish(row, MessageStatus.REPLIED, also=("send_ms", "parts_sent"))
    return "replied"


@shared_task(ignore_result=True)
def sweep_outbox() -> dict[str, int]:
    """Re-queue messages a lost broker message or a killed worker left behind, and
    purge finished rows past retention."""
    now = timezone.now()
    waiting = InboundMessage.objects.filter(
        status=MessageStatus.RECEIVED, received_at__lt=now - timedelta(seconds=settings.OUTBOX_RECEIVED_AFTER)
    )
    stuck = InboundMessage.objects.filter(
        status=MessageStatus.PROCESSING, started_at__lt=now - timedelta(seconds=settings.OUTBOX_STUCK_AFTER)
    )
    counts = {}
    for label, queryset in (("received", waiting), ("processing", stuck)):
        ids = list(queryset.order_by("received_at").values_list("pk", flat=True)[: settings.OUTBOX_SWEEP_BATCH])
        for message_id in ids:
            handle_message.delay(message_id)
        SWEPT.labels(label).inc(len(ids))
        counts[label] = len(ids)
    purged, _ = InboundMessage.objects.filter(
        status__in=[MessageStatus.REPLIED, MessageStatus.FAILED, MessageStatus.IGNORED],
        received_at__lt=now - timedelta(days=settings.OUTBOX_RETENTION_DAYS),
    ).delete()
    counts["purged"] = purged
    if counts["received"] or counts["processing"]:
        logger.warning("outbox sweeper re-queued %s", counts)
    return counts
