"""The one callback view: find the bot, check its source IP, cap the body, verify,
answer a handshake, record, enqueue, answer. Nothing else happens on this path."""

from __future__ import annotations

import logging
import time
import uuid

from django.conf import settings
from django.db import IntegrityError, transaction
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from prometheus_client import Counter, Histogram

from bots.models import Bot
from bots.validators import ip_in_cidrs
from channels_app import replay
from channels_app.errors import CallbackError
from channels_app.message import ParsedMessage
from channels_app.models import InboundMessage
from channels_app.registry import adapter_for
from config.clientip import client_ip

logger = logging.getLogger("switchboard.callbacks")

CALLBACKS = Counter(
    "switchboard_callbacks_total", "Platform callbacks by outcome", ["platform", "outcome"]
)
ACK_SECONDS = Histogram(
    "switchboard_callback_ack_seconds", "Time to answer a platform callback", ["platform"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
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


def _enqueue(message_id: int, acked_ms: float) -> None:
    try:
        from routing.tasks import handle_message

        handle_message.delay(message_id, acked_ms)
    except Exception as exc:  # broker down: the row is safe; the sweeper queues it later
        ENQUEUE_FAILED.inc()
        logger.error("message %s recorded but not queued (%s); the outbox sweeper will retry", message_id, exc)


def _record(bot: Bot, message: ParsedMessage, started: float) -> bool:
    """Insert the outbox row; False if the platform delivered this message before."""
    try:
        with transaction.atomic():
            row = InboundMessage.objects.create(
                bot=bot,
                platform_message_id=message.platform_message_id[:200],
                chat_id=message.chat_id[:200],
                chat_type=message.chat_type,
                sender_id=message.sender_id[:200],
                text=message.text,
                mentioned=message.mentioned,
                raw={"reply_context": message.reply_context, "event": message.raw},
            )
            transaction.on_commit(lambda: _enqueue(row.pk, (time.perf_counter() - started) * 1000))
    except IntegrityError:
        return False
    return True


def _should_answer(bot: Bot, message: ParsedMessage) -> bool:
    return not (message.chat_type == "group" and bot.require_mention_in_groups and not message.mentioned)


@csrf_exempt
def callback(request: HttpRequest, platform: str, bot_uuid: uuid.UUID) -> HttpResponse:
    started = time.perf_counter()
    adapter_class = adapter_for(platform)
    bot = Bot.objects.filter(uuid=bot_uuid, platform=platform, enabled=True).first() if adapter_class else None
    if bot is None:
        return _refuse(platform if adapter_class else "unknown", 404, "unknown_bot",
                       "callback for unknown or disabled bot %s on %s", bot_uuid, platform[:20])
    if request.method not in ("GET", "POST"):
        return _refuse(platform, 405, "method_not_allowed", "callback %s with method %s", bot.name, request.method)

    if bot.allowed_ips:
        address = client_ip(request)
        if address is None or not ip_in_cidrs(address, bot.allowed_ips):
            return _refuse(platform, 403, "ip_not_allowed",
                           "callback for %s refused: source %s is not in the bot's allowlist", bot.name, address)

    length = request.META.get("CONTENT_LENGTH") or "0"
    if not length.isdigit() or int(length) > settings.CALLBACK_MAX_BODY_BYTES:
        return _refuse(platform, 413, "too_large", "callback for %s refused: body of %s bytes", bot.name, length)

    adapter = adapter_class(bot)
    try:
        adapter.verify(request)
        answer = adapter.handshake(request)
        if answer is not None:
            CALLBACKS.labels(platform, "handshake").inc()
            return answer
        message = adapter.parse(request)
        if message is None:
            outcome = "event_ignored"
        elif not _should_answer(bot, message):
            outcome = "not_mentioned"
        elif _record(bot, message, started):
            outcome = "accepted"
        else:
            outcome = "duplicate"
        response = adapter.ack(request, message)
    except CallbackError as exc:
        if adapter.claimed_nonce:
            replay.release(adapter.claimed_nonce)
        return _refuse(platform, exc.status, exc.reason, "callback for %s refused (%s): %s",
                       bot.name, exc.reason, exc.detail)
    except Exception:
        # The database or something else of ours failed: the platform should retry, and
        # its retry must not be refused as a replay.
        if adapter.claimed_nonce:
            replay.release(adapter.claimed_nonce)
        raise
    CALLBACKS.labels(platform, outcome).inc()
    ACK_SECONDS.labels(platform).observe(time.perf_counter() - started)
    return response
