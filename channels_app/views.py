"""The one callback view: find the bot, check its source IP, cap the body, verify,
answer a handshake, record, enqueue, answer. Nothing else happens on this path, except
for a platform whose only way to answer is this response: its adapter may wait here for
the reply (Adapter.reply_in_response)."""

from __future__ import annotations

import logging
import time
import uuid

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from prometheus_client import Counter, Histogram

from bots.models import Bot
from bots.validators import ip_in_cidrs
from channels_app import handoff, outbox, replay
from channels_app.base import Adapter
from channels_app.errors import CallbackError, ReplayedRequest
from channels_app.message import ParsedMessage
from channels_app.registry import adapter_for
from config.clientip import client_ip

logger = logging.getLogger("switchboard.callbacks")

CALLBACKS = Counter("switchboard_callbacks_total", "Platform callbacks by outcome", ["platform", "outcome"])
ACK_SECONDS = Histogram(
    "switchboard_callback_ack_seconds",
    "Time to answer a platform callback",
    ["platform"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
REPLY_IN_RESPONSE_SECONDS = Histogram(
    "switchboard_callback_reply_in_response_seconds",
    "Time to answer a callback that carries the reply itself (it waits for the model)",
    ["platform"],
    buckets=(0.05, 0.25, 0.5, 1, 2, 3, 4, 4.5, 5, 6),
)
ENQUEUE_FAILED = Counter(
    "switchboard_enqueue_failed_total", "Recorded messages whose task could not be queued (the sweeper retries)"
)


def _plain(status: int, text: str) -> HttpResponse:
    return HttpResponse(text + "\n", status=status, content_type="text/plain; charset=utf-8")


def _refuse(platform: str, status: int, outcome: str, message: str, *log_args) -> HttpResponse:
    CALLBACKS.labels(platform, outcome).inc()
    logger.warning(message, *log_args)
    return _plain(status, outcome.replace("_", " "))


def _enqueue(message_id: int, acked_ms: float, adapter: Adapter | None = None) -> None:
    """Queue the dialog task. With the adapter's replay-check claim deferred, make it in
    the same round trip and undo the row of a replayed request (ReplayedRequest)."""
    from channels_app.tasks import handle_message

    claim = adapter.deferred_nonce if adapter is not None else None
    try:
        if claim is None:
            handoff.publish(handle_message, (message_id, acked_ms))
            return
        adapter.deferred_nonce = None
        reply = handoff.publish(handle_message, (message_id, acked_ms), along=claim.command())
    except Exception as exc:  # broker down: the row is safe; the sweeper queues it later
        ENQUEUE_FAILED.inc()
        logger.error("message %s recorded but not queued (%s); the outbox sweeper will retry", message_id, exc)
        if claim is not None:
            replay.unavailable(exc)
        return
    try:
        # The same message already under this nonce: a copy of this request, sent again
        # while this one ran, found the row and claimed the nonce first; the row is ours.
        adapter.settle_claim(claim, claim.outcome(reply))
    except ReplayedRequest:
        # Only a platform reusing a nonce for another message can get here: the signature
        # covers the message, so a replay repeats its id and meets the unique constraint.
        # The row goes; the task just queued finds nothing to claim.
        outbox.discard(message_id)
        raise


def _database_unavailable(platform: str, exc: DatabaseError) -> HttpResponse:
    # Nothing was recorded (a lone INSERT commits whole or not at all): 503 makes the
    # platform deliver the message again, and its retry is not refused as a replay.
    return _refuse(
        platform,
        503,
        "database_unavailable",
        "callback on %s not recorded, the database is unavailable: %s",
        platform[:20],
        exc,
    )


def _record(bot: Bot, message: ParsedMessage, started: float, adapter: Adapter) -> bool:
    """Insert the outbox row and hand it off; False if the platform delivered this
    message before."""
    message_id = outbox.record(message, bot)
    if message_id is None:
        return False
    if adapter.deferred_nonce is not None:  # only outside a transaction (see callback())
        _enqueue(message_id, (time.perf_counter() - started) * 1000, adapter)
    else:
        transaction.on_commit(lambda: _enqueue(message_id, (time.perf_counter() - started) * 1000))
    return True


# Bots by (platform, uuid), kept BOT_CACHE_SECONDS: one SELECT (and the decryption of the
# bot's secrets) fewer per callback. A save or delete in this process empties it at once;
# other processes see a change within BOT_CACHE_SECONDS.
BOT_CACHE_SECONDS = 2.0
_bots: dict[tuple[str, uuid.UUID], tuple[float, Bot | None]] = {}


def _find_bot(platform: str, bot_uuid: uuid.UUID) -> Bot | None:
    now = time.monotonic()
    cached = _bots.get((platform, bot_uuid))
    if cached is not None and now - cached[0] < BOT_CACHE_SECONDS:
        return cached[1]
    bot = Bot.objects.filter(uuid=bot_uuid, platform=platform, enabled=True).first()
    if len(_bots) > 10_000:  # unknown UUIDs must not grow it without bound
        _bots.clear()
    _bots[(platform, bot_uuid)] = (now, bot)
    return bot


@receiver([post_save, post_delete], sender=Bot, dispatch_uid="callback-bot-cache")
def _forget_bots(**kwargs) -> None:
    _bots.clear()


def _should_answer(bot: Bot, message: ParsedMessage) -> bool:
    return not (message.chat_type == "group" and bot.require_mention_in_groups and not message.mentioned)


@csrf_exempt
def callback(request: HttpRequest, platform: str, bot_uuid: uuid.UUID) -> HttpResponse:
    started = time.perf_counter()
    adapter_class = adapter_for(platform)
    try:
        bot = _find_bot(platform, bot_uuid) if adapter_class else None
    except DatabaseError as exc:
        return _database_unavailable(platform, exc)
    if bot is None:
        return _refuse(
            platform if adapter_class else "unknown",
            404,
            "unknown_bot",
            "callback for unknown or disabled bot %s on %s",
            bot_uuid,
            platform[:20],
        )
    if request.method not in ("GET", "POST"):
        return _refuse(platform, 405, "method_not_allowed", "callback %s with method %s", bot.name, request.method)

    if bot.allowed_ips:
        address = client_ip(request)
        if address is None or not ip_in_cidrs(address, bot.allowed_ips):
            return _refuse(
                platform,
                403,
                "ip_not_allowed",
                "callback for %s refused: source %s is not in the bot's allowlist",
                bot.name,
                address,
            )

    length = request.META.get("CONTENT_LENGTH") or "0"
    if not length.isdigit() or int(length) > settings.CALLBACK_MAX_BODY_BYTES:
        return _refuse(platform, 413, "too_large", "callback for %s refused: body of %s bytes", bot.name, length)

    adapter = adapter_class(bot)
    # A replay-check claim can ride along with the hand-off, one Redis round trip fewer,
    # when the hand-off happens here and now (not at the commit of someone's transaction).
    adapter.may_defer_nonce = not connection.in_atomic_block and handoff.can_claim_nonces()
    try:
        adapter.verify(request)
        answer = adapter.handshake(request)
        if answer is not None:
            adapter.claim_deferred_nonce()
            CALLBACKS.labels(platform, "handshake").inc()
            return answer
        message = adapter.parse(request)
        if message is None:
            outcome = "event_ignored"
        elif not _should_answer(bot, message):
            outcome = "not_mentioned"
        elif _record(bot, message, started, adapter):
            outcome = "accepted"
        else:
            outcome = "duplicate"
        # Where no hand-off took the replay-check claim along (nothing queued, or a
        # duplicate: a nonce reused for another message is still refused), it goes alone.
        adapter.claim_deferred_nonce()
        # A re-delivery waits again too: the platform re-delivers because it is still
        # waiting for the answer.
        response = adapter.reply_in_response(request, message) if outcome in ("accepted", "duplicate") else None
        answered_in_response = response is not None
        if response is None:
            response = adapter.ack(request, message)
        if adapter.redelivered and outcome != "accepted":
            outcome = "redelivered"  # the very same request again, answered as the first was
    except Exception as exc:
        # Refused or failed, the platform may deliver this request again (after a 503, or
        # a sender bug fixed): its retry must not be refused as a replay.
        if adapter.claimed_nonce:
            replay.release(adapter.claimed_nonce)
        if isinstance(exc, CallbackError):
            return _refuse(
                platform, exc.status, exc.reason, "callback for %s refused (%s): %s", bot.name, exc.reason, exc.detail
            )
        if isinstance(exc, DatabaseError):
            return _database_unavailable(platform, exc)
        raise
    CALLBACKS.labels(platform, outcome).inc()
    if answered_in_response:
        # Waiting for the model is not acknowledging: kept out of the ack histogram.
        REPLY_IN_RESPONSE_SECONDS.labels(platform).observe(time.perf_counter() - started)
    else:
        ACK_SECONDS.labels(platform).observe(time.perf_counter() - started)
    return response
