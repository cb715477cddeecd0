"""The dialog task and the outbox sweeper.

handle_message is idempotent on the row's status: whoever claims the row (a status
change done in one UPDATE) does the work; a duplicate delivery of the task, a sweeper
re-enqueue or a broker redelivery after a crash finds nothing to claim. The claim is a
lease its worker renews while the task runs (routing/lease.py): a row in processing is
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
from functools import cache

import httpx
from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection
from django.db.models import Q
from django.utils import timezone
from prometheus_client import Counter, Histogram
from redis.exceptions import RedisError

from channels_app.errors import TransportError
from channels_app.message import OutboundReply
from channels_app.models import InboundMessage, MessageStatus
from channels_app.outbound import split_reply
from channels_app.registry import adapter_for
from config.broker import queue_depth
from config.jsonlog import bind_log_context
from routing import configcache, lease, ratelimit
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
    status, started_at, attempts, acked_ms, owner, until = (
        quote(c) for c in ("status", "started_at", "attempts", "acked_ms", "lease_owner", "lease_until"))
    # Only the model's own table and column names go into the text; values are parameters.
    if deferred:  # back for the send slot it reserved: the row waits, processing, until then
        return (f"UPDATE {table} SET {started_at} = %s, {owner} = %s, {until} = %s "  # noqa: S608
                f"WHERE {quote('id')} = %s AND {status} = %s AND {started_at} = %s RETURNING *")
    # A processing row is taken only once its lease has lapsed (or it never had one).
    return (f"UPDATE {table} SET {status} = %s, {started_at} = %s, {attempts} = {attempts} + 1, "  # noqa: S608
            f"{acked_ms} = COALESCE(%s, {acked_ms}), {owner} = %s, {until} = %s "
            f"WHERE {quote('id')} = %s AND ({status} = %s "
            f"OR ({status} = %s AND ({until} IS NULL OR {until} < %s))) RETURNING *")


def _claim(message_id: int, acked_ms: float | None, owner: str,
           slot: datetime | None = None) -> InboundMessage | None:
    """Take the row (received, or processing with a lapsed lease) for the task `owner`
    and load it: one statement, so two workers handed the same message cannot both take
    it. With slot: take back the row this task deferred to that send slot. None: not
    ours to do."""
    now = timezone.now()
    adapt = connection.ops.adapt_datetimefield_value
    until = adapt(lease.lease_end(now))
    if slot is not None:
        params = [adapt(now), owner, until, message_id, MessageStatus.PROCESSING, adapt(slot)]
    else:
        params = [MessageStatus.PROCESSING, adapt(now), acked_ms, owner, until, message_id,
                  MessageStatus.RECEIVED, MessageStatus.PROCESSING, adapt(now)]
    rows = list(InboundMessage.objects.raw(_claim_sql(deferred=slot is not None), params))
    return rows[0] if rows else None


@cache
def _update_sql(fields: tuple[str, ...]) -> tuple[str, tuple]:
    quote = connection.ops.quote_name
    meta = InboundMessage._meta
    model_fields = tuple(meta.get_field(name) for name in fields)
    assignments = ", ".join(f"{quote(field.column)} = %s" for field in model_fields)
    # Only the model's own table and column names go into the text; values are parameters.
    return (f"UPDATE {quote(meta.db_table)} SET {assignments} "  # noqa: S608
            f"WHERE {quote(meta.pk.column)} = %s AND {quote('lease_owner')} = %s", model_fields)


def _save(row: InboundMessage, *fields: str) -> bool:
    """row.save(update_fields=fields) with the statement built once per set of fields
    (the ORM compiled it anew for every message, a quarter of the task's own CPU), only
    while this task still holds the row. False: another task has taken it over."""
    sql, model_fields = _update_sql(fields)
    params = [field.get_db_prep_save(getattr(row, field.attname), connection) for field in model_fields]
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, row.pk, row.lease_owner])
        return cursor.rowcount == 1


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
    row.started_at, row.lease_until = slot, lease.lease_end(slot)
    if not _save(row, *unsaved, "started_at", "lease_until", "parts_sent"):
        return None
    try:
        handle_message.apply_async((row.pk,), {"slot_at": slot.isoformat()}, countdown=wait)
    except Exception as exc:  # noqa: BLE001 (the broker's errors vary by transport)
        logger.warning("message %s could not be deferred to its send slot (%s); waiting for it here", row.pk, exc)
        row.started_at, row.lease_until = timezone.now(), lease.lease_end()
        _save(row, "started_at", "lease_until")
        return False
    DEFERRED.labels(row.bot.platform).inc()
    return True


def _finish(row: InboundMessage, status: str, error: str = "", also: tuple[str, ...] = ()) -> bool:
    """Record the final status, with any other fields the caller changed on the row.
    False if another task had taken the row over."""
    row.status = status
    row.error = error[:2000]
    row.part_in_flight = None
    fields = ("status", "error", "part_in_flight", *also)
    if status == MessageStatus.REPLIED:
        row.replied_at = timezone.now()
        fields += ("replied_at",)
    if not _save(row, *fields):
        _taken_over(row)
        return False
    MESSAGES_DONE.labels(row.bot.platform, row.bot.name, status).inc()
    if status == MessageStatus.REPLIED:
        END_TO_END.labels(row.bot.platform).observe((row.replied_at - row.received_at).total_seconds())
    if status == MessageStatus.FAILED:
        logger.error("message %s of bot %s failed: %s", row.pk, row.bot.name, error)
    return True


def _release_for_retry(row: InboundMessage, error: str, outcome_unknown: bool) -> None:
    """Back to "received" so the retried task (or the sweeper) can claim it again. A
    part whose send may have arrived stays in flight, so its retry is counted as a
    repeat; one the platform refused is not."""
    row.status, row.error = MessageStatus.RECEIVED, error[:2000]
    if not outcome_unknown:
        row.part_in_flight = None
    _save(row, "status", "error", "part_in_flight")


def _note_resend(row: InboundMessage, adapter, index: int, parts: int) -> tuple[str, ...]:
    """The part `index` is sent again after a send whose outcome was lost: count it,
    and on a platform that cannot drop the repeat, say so on the row. The row's fields
    this changed."""
    platform = row.bot.platform
    if adapter.drops_repeated_sends:
        RESENT.labels(platform, "dropped_by_platform").inc()
        logger.info("message %s: part %d of %d sent again after a lost send; %s drops the repeat",
                    row.pk, index + 1, parts, platform)
        return ()
    RESENT.labels(platform, "possible_duplicate").inc()
    row.possible_duplicates += 1
    logger.warning("message %s: part %d of %d sent again after a lost send; %s cannot drop a repeat, "
                   "so the user may see this part twice", row.pk, index + 1, parts, platform)
    return ("possible_duplicates",)


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


def _send_parts(row: InboundMessage, adapter, parts: list[str], held_slot: datetime | None,
                unsaved: tuple[str, ...]) -> str | None:
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
        noted = _note_resend(row, adapter, index, len(parts)) if index == lost_part else ()
        row.part_in_flight = index
        if not _save(row, *unsaved, *noted, "parts_sent", "part_in_flight"):
            return _taken_over(row)
        unsaved = ()
        adapter.send(
            OutboundReply(
                chat_id=row.chat_id, chat_type=row.chat_type, sender_id=row.sender_id, text=parts[index],
                reply_context=reply_context,
                idempotency_key=f"{key_prefix}{index}{key_suffix}",
                part=index + 1,
                parts=len(parts),
                resend=resend,
            ),
            http_client(),
        )
        row.parts_sent, row.part_in_flight = index + 1, None
        # The last part is saved with the final status; the others at once, so that a
        # worker lost while waiting for the next slot leaves no part in doubt.
        if row.parts_sent < len(parts) and not _save(row, "parts_sent", "part_in_flight"):
            return _taken_over(row)
    return None


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=3, ignore_result=True)
def handle_message(self, message_id: int, acked_ms: float | None = None, slot_at: str | None = None) -> str:
    bind_log_context(message_id=message_id)
    held_slot = datetime.fromisoformat(slot_at) if slot_at else None
    try:
        row = _claim(message_id, acked_ms, self.request.id, held_slot)
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
        _release_for_retry(row, f"send attempt {self.request.retries + 1}: {exc}",
                           outcome_unknown=isinstance(exc.__cause__, OUTCOME_UNKNOWN))
        retry_after = getattr(exc, "retry_after", None)
        # Without slot_at: the row is "received" again, and the retry reserves its own slot.
        raise self.retry(countdown=retry_after or 2 ** self.request.retries, kwargs={}) from None
    if stopped is not None:
        return stopped
    row.send_ms = (time.perf_counter() - started) * 1000
    if not _finish(row, MessageStatus.REPLIED, also=("send_ms", "parts_sent")):
        return "taken over"
    if first_delivery:
        # A reply re-sent from the console is already part of the conversation.
        context.append(bot, row.chat_id, row.sender_id, row.text, row.reply_text)
    return "replied"


def _lost_from_queue(now: datetime) -> list[int]:
    """Received rows old enough that their task should have started, except those whose
    task may still wait in the queue.

    The queue is first in, first out, and each of its waiting messages is at most one
    row's task: so the rows that can still be waiting are among the `depth` newest
    received ones, and an older received row was passed over (its message lost with a
    restarted broker, or never queued). A backlog is left alone however long it is; a
    row lost behind one is taken once the queue ahead of it has drained, and a waiting
    row gets a second message only when a newer one was lost (at most one per lost row,
    and the second message then counts in the next sweep's depth)."""
    received = InboundMessage.objects.filter(status=MessageStatus.RECEIVED)
    cutoff = now - timedelta(seconds=settings.OUTBOX_RECEIVED_AFTER)
    depth = queue_depth()
    if depth:
        newest = list(received.order_by("-received_at").values_list("received_at", flat=True)[depth - 1:depth])
        if not newest:
            return []  # no more received rows than waiting messages: all may be waiting
        cutoff = min(cutoff, newest[0])
    lost = received.filter(received_at__lt=cutoff).order_by("received_at")
    return list(lost.values_list("pk", flat=True)[: settings.OUTBOX_SWEEP_BATCH])


@shared_task(ignore_result=True)
def sweep_outbox() -> dict[str, int]:
    """Re-queue messages a lost broker message or a dead worker left behind, and purge
    finished rows past retention."""
    now = timezone.now()
    # A processing row whose lease lapsed: its worker stopped renewing it (it is dead).
    stuck = InboundMessage.objects.filter(Q(lease_until__lt=now) | Q(lease_until=None),
                                          status=MessageStatus.PROCESSING)
    counts = {}
    for label, ids in (("received", _lost_from_queue(now)),
                       ("processing", stuck.order_by("received_at").values_list("pk", flat=True)
                        [: settings.OUTBOX_SWEEP_BATCH])):
        ids = list(ids)
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
