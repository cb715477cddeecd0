"""The outbox: every write of an InboundMessage row, and every statement built by hand for it.

A row goes received → processing → replied | failed (ignored is set by no code today;
the sweeper purges it with the finished ones). The changes of status, all made here:

- record(): a callback inserts the row, received.
- claim(): a dialog task takes a received row, or a processing one whose lease has
  lapsed, and leases it: processing.
- finish(): the task ends it: replied or failed.
- release_for_retry(): a send failed and will be retried: received again.
- requeue(): the console's replay or re-send puts a failed or replied row back: received.

Between claim and finish, the task's writes (defer, in-flight marks, sent parts) are
fenced on its lease: save() changes nothing once another task has taken the row over.
The lease (lease_owner, lease_until) is renewed by renew_leases(), from the worker's
renewal thread (channels_app/lease.py). The WeChat passive reply reads a row's state and
notes on it what went out in a callback's response (passive_state(), note_passive_*()).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import cache
from typing import Any

import psycopg
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from bots.models import Bot
from channels_app.message import ParsedMessage
from channels_app.models import InboundMessage, MessageStatus

# The statuses a row no longer changes from on its own: purged after retention.
FINISHED = (MessageStatus.REPLIED, MessageStatus.FAILED, MessageStatus.IGNORED)
# Longest error text kept on a row.
ERROR_LENGTH = 2000


# -- leases -----------------------------------------------------------------------------


def lease_seconds() -> float:
    return float(settings.OUTBOX_STUCK_AFTER)


def lease_end(start: datetime | None = None) -> datetime:
    return (start or timezone.now()) + timedelta(seconds=lease_seconds())


def renew_leases(owners: list[str]) -> int:
    """Extend the lease of every processing row held by one of these task ids."""
    if not owners:
        return 0
    return InboundMessage.objects.filter(status=MessageStatus.PROCESSING, lease_owner__in=owners).update(
        lease_until=lease_end()
    )


# -- record (the callback) --------------------------------------------------------------

# The columns a callback fills; every other column starts at its field's default.
_PER_MESSAGE = (
    "bot",
    "platform_message_id",
    "chat_id",
    "chat_type",
    "sender_id",
    "text",
    "mentioned",
    "raw",
    "received_at",
)
_RAW = InboundMessage._meta.get_field("raw")
_RECEIVED_AT = InboundMessage._meta.get_field("received_at")


@cache
def _insert_statement() -> tuple[str, tuple]:
    """INSERT of a whole outbox row that skips a re-delivery instead of failing on it,
    and the database values of the columns that are the same for every new row."""
    meta = InboundMessage._meta
    fields = [f for f in meta.concrete_fields if not f.primary_key]
    constant = [f for f in fields if f.name not in _PER_MESSAGE]
    columns = [meta.get_field(name).column for name in _PER_MESSAGE] + [f.column for f in constant]
    quote = connection.ops.quote_name
    # Only the model's own table and column names go into the text; values are parameters.
    sql = (
        f"INSERT INTO {quote(meta.db_table)} ({', '.join(quote(c) for c in columns)}) "  # noqa: S608
        f"VALUES ({', '.join(['%s'] * len(columns))}) "
        f"ON CONFLICT ({quote('bot_id')}, {quote('platform_message_id')}) DO NOTHING "
        f"RETURNING {quote(meta.pk.column)}"
    )
    return sql, tuple(f.get_db_prep_save(f.get_default(), connection) for f in constant)


def record(message: ParsedMessage, bot: Bot) -> int | None:
    """Insert the received row; its id, None if the platform delivered this message before.

    One statement, in autocommit: no BEGIN/COMMIT round trips and no IntegrityError to
    unwind for a re-delivery. Inside someone's transaction (a test's) it simply joins it.
    The values go straight to the driver instead of through a model instance and the
    ORM's insert path, and on PostgreSQL as bound parameters of a statement prepared
    once per connection instead of being quoted into the text by the client and parsed
    and planned again: each of those cost more CPU than inserting the row
    (docs/performance.md)."""
    sql, constants = _insert_statement()
    values = {
        "bot": bot.pk,
        "platform_message_id": message.platform_message_id[:200],
        "chat_id": message.chat_id[:200],
        "chat_type": message.chat_type,
        "sender_id": message.sender_id[:200],
        "text": message.text,
        "mentioned": message.mentioned,
        "raw": _RAW.get_db_prep_save({"reply_context": message.reply_context, "event": message.raw}, connection),
        "received_at": _RECEIVED_AT.get_db_prep_save(timezone.now(), connection),
    }
    params = (*(values[name] for name in _PER_MESSAGE), *constants)  # the statement's column order
    if connection.vendor != "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            inserted = cursor.fetchone()
    else:
        connection.ensure_connection()
        with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
            cursor.execute(sql, params, prepare=settings.DATABASE_PREPARED_STATEMENTS)
            inserted = cursor.fetchone()
    return None if inserted is None else inserted[0]


def discard(message_id: int) -> None:
    """Remove a row recorded for a request refused after the fact (a replayed nonce)."""
    InboundMessage.objects.filter(pk=message_id).delete()


# -- claim and the task's fenced writes ---------------------------------------------------


@cache
def _claim_sql(deferred: bool = False) -> str:
    quote = connection.ops.quote_name
    table = quote(InboundMessage._meta.db_table)
    status, started_at, attempts, acked_ms, owner, until = (
        quote(c) for c in ("status", "started_at", "attempts", "acked_ms", "lease_owner", "lease_until")
    )
    # Only the model's own table and column names go into the text; values are parameters.
    if deferred:  # back for the send slot it reserved: the row waits, processing, until then
        return (
            f"UPDATE {table} SET {started_at} = %s, {owner} = %s, {until} = %s "  # noqa: S608
            f"WHERE {quote('id')} = %s AND {status} = %s AND {started_at} = %s RETURNING *"
        )
    # A processing row is taken only once its lease has lapsed (or it never had one).
    return (
        f"UPDATE {table} SET {status} = %s, {started_at} = %s, {attempts} = {attempts} + 1, "  # noqa: S608
        f"{acked_ms} = COALESCE(%s, {acked_ms}), {owner} = %s, {until} = %s "
        f"WHERE {quote('id')} = %s AND ({status} = %s "
        f"OR ({status} = %s AND ({until} IS NULL OR {until} < %s))) RETURNING *"
    )


def claim(message_id: int, acked_ms: float | None, owner: str, slot: datetime | None = None) -> InboundMessage | None:
    """Take the row (received, or processing with a lapsed lease) for the task `owner`
    and load it: one statement, so two workers handed the same message cannot both take
    it. With slot: take back the row this task deferred to that send slot. None: not
    ours to do."""
    now = timezone.now()
    adapt = connection.ops.adapt_datetimefield_value
    until = adapt(lease_end(now))
    if slot is not None:
        params = [adapt(now), owner, until, message_id, MessageStatus.PROCESSING, adapt(slot)]
    else:
        params = [
            MessageStatus.PROCESSING,
            adapt(now),
            acked_ms,
            owner,
            until,
            message_id,
            MessageStatus.RECEIVED,
            MessageStatus.PROCESSING,
            adapt(now),
        ]
    rows = list(InboundMessage.objects.raw(_claim_sql(deferred=slot is not None), params))
    return rows[0] if rows else None


@cache
def _update_sql(fields: tuple[str, ...]) -> tuple[str, tuple]:
    quote = connection.ops.quote_name
    meta = InboundMessage._meta
    model_fields = tuple(meta.get_field(name) for name in fields)
    assignments = ", ".join(f"{quote(field.column)} = %s" for field in model_fields)
    # Only the model's own table and column names go into the text; values are parameters.
    return (
        f"UPDATE {quote(meta.db_table)} SET {assignments} "  # noqa: S608
        f"WHERE {quote(meta.pk.column)} = %s AND {quote('lease_owner')} = %s",
        model_fields,
    )


def save(row: InboundMessage, *fields: str) -> bool:
    """row.save(update_fields=fields) with the statement built once per set of fields
    (the ORM compiled it anew for every message, a quarter of the task's own CPU), only
    while this task still holds the row. False: another task has taken it over."""
    sql, model_fields = _update_sql(fields)
    params = [field.get_db_prep_save(getattr(row, field.attname), connection) for field in model_fields]
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, row.pk, row.lease_owner])
        return cursor.rowcount == 1


def defer(row: InboundMessage, slot: datetime, unsaved: tuple[str, ...] = ()) -> bool:
    """Mark the row as waiting, processing, for its send slot: leased until
    OUTBOX_STUCK_AFTER past it (no worker renews it meanwhile). unsaved: fields of the
    row to save with it. False if the row was taken over."""
    row.started_at, row.lease_until = slot, lease_end(slot)
    return save(row, *unsaved, "started_at", "lease_until", "parts_sent")


def resume(row: InboundMessage) -> bool:
    """Undo defer(): the task waits for its slot itself after all, leased from now."""
    row.started_at, row.lease_until = timezone.now(), lease_end()
    return save(row, "started_at", "lease_until")


def mark_in_flight(
    row: InboundMessage, index: int, unsaved: tuple[str, ...] = (), possible_duplicate: bool = False
) -> bool:
    """Record that the send of part `index` begins, with any unsaved fields.
    possible_duplicate: this part is sent again after a lost send, on a platform that
    cannot drop the repeat. False if the row was taken over."""
    row.part_in_flight = index
    noted: tuple[str, ...] = ()
    if possible_duplicate:
        row.possible_duplicates += 1
        noted = ("possible_duplicates",)
    return save(row, *unsaved, *noted, "parts_sent", "part_in_flight")


def mark_sent(row: InboundMessage, index: int, parts: int) -> bool:
    """Part `index` of `parts` went out. The last part is saved with the final status;
    the others at once, so that a worker lost while waiting for the next slot leaves no
    part in doubt. False if the row was taken over."""
    row.parts_sent, row.part_in_flight = index + 1, None
    return row.parts_sent >= parts or save(row, "parts_sent", "part_in_flight")


def finish(row: InboundMessage, status: str, error: str = "", also: tuple[str, ...] = ()) -> bool:
    """Record the final status (replied or failed), with any other fields the caller
    changed on the row. False if another task had taken the row over."""
    row.status = status
    row.error = error[:ERROR_LENGTH]
    row.part_in_flight = None
    fields = ("status", "error", "part_in_flight", *also)
    if status == MessageStatus.REPLIED:
        row.replied_at = timezone.now()
        fields += ("replied_at",)
    return save(row, *fields)


def release_for_retry(row: InboundMessage, error: str, outcome_unknown: bool) -> None:
    """Back to received so the retried task (or the sweeper) can claim it again. A
    part whose send may have arrived stays in flight, so its retry is counted as a
    repeat; one the platform refused is not."""
    row.status, row.error = MessageStatus.RECEIVED, error[:ERROR_LENGTH]
    if not outcome_unknown:
        row.part_in_flight = None
    save(row, "status", "error", "part_in_flight")


# -- the console --------------------------------------------------------------------------


def requeue(row: InboundMessage, reset: dict[str, Any]) -> bool:
    """Put a finished row back to received with the fields in reset, for the console's
    replay or re-send. One conditional UPDATE: a worker that picked the row up in the
    meantime wins (False)."""
    if not InboundMessage.objects.filter(pk=row.pk, status=row.status).update(status=MessageStatus.RECEIVED, **reset):
        return False
    row.refresh_from_db()
    return True


# -- the sweeper ----------------------------------------------------------------------------


def lost_from_queue(now: datetime, depth: int) -> list[int]:
    """Received rows old enough that their task should have started, except those whose
    task may still wait in the queue (`depth` messages wait in it).

    The queue is first in, first out, and each of its waiting messages is at most one
    row's task: so the rows that can still be waiting are among the `depth` newest
    received ones, and an older received row was passed over (its message lost with a
    restarted broker, or never queued). A backlog is left alone however long it is; a
    row lost behind one is taken once the queue ahead of it has drained, and a waiting
    row gets a second message only when a newer one was lost (at most one per lost row,
    and the second message then counts in the next sweep's depth)."""
    received = InboundMessage.objects.filter(status=MessageStatus.RECEIVED)
    cutoff = now - timedelta(seconds=settings.OUTBOX_RECEIVED_AFTER)
    if depth:
        newest = list(received.order_by("-received_at").values_list("received_at", flat=True)[depth - 1 : depth])
        if not newest:
            return []  # no more received rows than waiting messages: all may be waiting
        cutoff = min(cutoff, newest[0])
    lost = received.filter(received_at__lt=cutoff).order_by("received_at")
    return list(lost.values_list("pk", flat=True)[: settings.OUTBOX_SWEEP_BATCH])


def lapsed(now: datetime) -> list[int]:
    """Processing rows whose lease lapsed: their worker stopped renewing it (it is dead)."""
    stuck = InboundMessage.objects.filter(Q(lease_until__lt=now) | Q(lease_until=None), status=MessageStatus.PROCESSING)
    return list(stuck.order_by("received_at").values_list("pk", flat=True)[: settings.OUTBOX_SWEEP_BATCH])


def purge_finished(now: datetime) -> int:
    """Delete the finished rows past OUTBOX_RETENTION_DAYS; how many went."""
    purged, _ = InboundMessage.objects.filter(
        status__in=FINISHED,
        received_at__lt=now - timedelta(days=settings.OUTBOX_RETENTION_DAYS),
    ).delete()
    return purged


# -- the WeChat passive reply -------------------------------------------------------------


def passive_state(bot: Bot, msgid: str) -> dict[str, Any] | None:
    """Status, raw and reply text of the bot's row for the platform message msgid."""
    return (
        InboundMessage.objects.filter(bot=bot, platform_message_id=msgid).values("status", "raw", "reply_text").first()
    )


def note_passive_delivery(bot: Bot, msgid: str, count: int, delivered_with: str) -> tuple[int, str] | None:
    """Record on msgid's row that `count` more of its parts went to the platform in the
    answer to the callback of delivered_with. The parts delivered so far and the row's
    reply text; None without a row."""
    now = timezone.now()
    with transaction.atomic():
        row = InboundMessage.objects.select_for_update().filter(bot=bot, platform_message_id=msgid).first()
        if row is None:
            return None
        passive = dict((row.raw or {}).get("passive") or {})
        delivered = int(passive.get("parts_delivered", 0)) + count
        passive.update(parts_delivered=delivered, delivered_at=now.isoformat(), delivered_with=delivered_with)
        row.raw = {**(row.raw or {}), "passive": passive}
        fields = ["raw"]
        if row.status == MessageStatus.REPLIED:
            row.replied_at = now  # when the user got it, not when it was queued
            fields.append("replied_at")
        row.save(update_fields=fields)
    return delivered, row.reply_text


def note_passive_waiting(bot: Bot, msgid: str) -> None:
    """Record on msgid's row since when the user has been told its answer follows."""
    with transaction.atomic():
        row = InboundMessage.objects.select_for_update().filter(bot=bot, platform_message_id=msgid).first()
        if row is None:
            return
        passive = dict((row.raw or {}).get("passive") or {})
        passive.setdefault("waiting_since", timezone.now().isoformat())
        row.raw = {**(row.raw or {}), "passive": passive}
        row.save(update_fields=["raw"])
