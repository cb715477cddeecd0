"""`POST /api/v1/chat`: one dialog turn through a bot's routing and context, answered
synchronously within CHAT_API_TIMEOUT.

The turn is the same one a platform message gets (routing.dialog.answer), but its
context lives apart from the bot's platform chats: it is keyed by the API key's prefix
and the caller's conversation id, so one API client can neither read a platform user's
history nor another client's by guessing their ids.
"""

from __future__ import annotations

import logging
import time
import uuid

from django.conf import settings
from django.db.models import Q
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from prometheus_client import Counter
from rest_framework import serializers, status
from rest_framework.exceptions import APIException, NotFound
from rest_framework.request import Request
from rest_framework.response import Response

from bots.api_auth import ApiError, ApiKeyRateThrottle, ApiView
from bots.models import ApiKey, ApiKeyScope, Bot
from routing.backends import ModelError
from routing.context import ContextStore
from routing.deadline import DeadlineExceeded, deadline, deadline_http_client
from routing.dialog import answer
from routing.engine import NoBackend
from routing.models import ChatType

logger = logging.getLogger("switchboard.api")

TEXT_MAX_LENGTH = 16000
ID_MAX_LENGTH = 200

CHAT_CALLS = Counter("switchboard_api_chat_total", "Chat API turns by outcome", ["outcome"])


class ChatRequest(serializers.Serializer):
    bot = serializers.CharField(max_length=100, help_text="the bot's name or UUID")
    text = serializers.CharField(max_length=TEXT_MAX_LENGTH, help_text="what the user said")
    user = serializers.CharField(max_length=ID_MAX_LENGTH, help_text="your id for the user (the context is per user)")
    conversation = serializers.CharField(
        max_length=ID_MAX_LENGTH,
        required=False,
        help_text="your id for the conversation; turns with the same bot, user and conversation share context. "
        "Default: one conversation per user.",
    )
    chat_type = serializers.ChoiceField(
        choices=ChatType.choices, default=ChatType.P2P, help_text="for routing rules that match on chat type"
    )

    def to_internal_value(self, data):
        # A misspelt optional field ("chat-type") would otherwise be dropped silently.
        unknown = sorted(set(data) - set(self.fields)) if isinstance(data, dict) else []
        errors = {name: [f"unknown field; the fields are {', '.join(self.fields)}"] for name in unknown}
        try:
            value = super().to_internal_value(data)
        except serializers.ValidationError as exc:
            raise serializers.ValidationError({**errors, **exc.detail}) from None
        if errors:
            raise serializers.ValidationError(errors)
        return value


class ChatResponse(serializers.Serializer):
    answer = serializers.CharField()
    bot = serializers.CharField(help_text="the bot's name")
    backend = serializers.CharField(help_text="the model backend that answered (the selected one or its fallback)")
    rule = serializers.CharField(help_text="why that backend: the routing rule that matched, or the bot's default")
    rule_id = serializers.IntegerField(allow_null=True, help_text="the matching rule's id; null for the default")
    conversation = serializers.CharField()
    latency_ms = serializers.FloatField(help_text="the whole turn: context, routing and model")
    model_ms = serializers.FloatField(help_text="the model call alone, retries and fallback included")


class ChatFailed(APIException):
    """The turn itself failed; the status says whose side it is on."""

    def __init__(self, status_code: int, code: str, message: str) -> None:
        self.status_code = status_code
        super().__init__(message, code)


def find_bot(reference: str) -> Bot:
    """A bot by name or by UUID."""
    lookup = Q(name=reference)
    try:
        lookup |= Q(uuid=uuid.UUID(reference))
    except ValueError:
        pass
    bot = Bot.objects.select_related("default_backend").filter(lookup).first()
    if bot is None:
        raise NotFound(f"no bot named or with UUID {reference!r}; bot names are case-sensitive", code="unknown_bot")
    return bot


def _error(description: str) -> OpenApiResponse:
    return OpenApiResponse(ApiError, description=description)


class ChatView(ApiView):
    required_scope = ApiKeyScope.CHAT
    throttle_classes = [ApiKeyRateThrottle]

    @extend_schema(
        operation_id="chat",
        summary="Run one dialog turn",
        description=(
            "Runs one turn of the named bot's dialog: its routing rules pick a model backend, the "
            "conversation's recent turns are sent along, and the answer is returned (and remembered for "
            "the next turn). Needs a key with the `chat` scope. Throttled per key (CHAT_API_RATE); the "
            "whole turn is bounded by CHAT_API_TIMEOUT."
        ),
        request=ChatRequest,
        responses={
            200: OpenApiResponse(ChatResponse, description="the answer, and how it was reached"),
            400: _error(
                "invalid_request (with `fields`) or parse_error: the body is not what this endpoint takes "
                "(not JSON in UTF-8, nested deeper than 64 levels, or holding NaN, Infinity, U+0000 or "
                "an unpaired surrogate)"
            ),
            401: _error("missing_credentials, malformed_credentials, unknown_key, key_revoked or key_expired"),
            403: _error("ip_not_allowed or missing_scope"),
            404: _error("unknown_bot"),
            409: _error("bot_disabled"),
            413: _error("too_large: the body is over CALLBACK_MAX_BODY_BYTES (1 MiB by default)"),
            415: _error("unsupported_media_type: the body is not sent as application/json"),
            429: _error("throttled: too many requests with this key; see Retry-After"),
            502: _error("model_failed: the model backend (and its fallback) could not answer"),
            503: _error("no_backend: no routing rule matched and the bot has no default backend"),
            504: _error("model_timeout: no answer within CHAT_API_TIMEOUT"),
        },
        examples=[
            OpenApiExample(
                "a question",
                request_only=True,
                value={"bot": "support", "text": "Where is my order?", "user": "u-1001"},
            ),
        ],
    )
    def post(self, request: Request) -> Response:
        payload = ChatRequest(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        bot = find_bot(data["bot"])
        if not bot.enabled:
            raise ChatFailed(
                status.HTTP_409_CONFLICT,
                "bot_disabled",
                f"bot {bot.name} is disabled; an administrator can enable it in the console",
            )
        key: ApiKey = request.auth
        conversation = data.get("conversation") or data["user"]
        chat_id = f"api:{key.prefix}:{conversation}"
        context = ContextStore()
        started = time.perf_counter()
        try:
            with deadline(settings.CHAT_API_TIMEOUT):
                result = answer(
                    bot, chat_id, data["user"], data["chat_type"], data["text"], deadline_http_client(), context
                )
        except DeadlineExceeded:
            CHAT_CALLS.labels("timeout").inc()
            logger.warning("chat API: bot %s: no answer within %s s", bot.name, settings.CHAT_API_TIMEOUT)
            raise ChatFailed(
                status.HTTP_504_GATEWAY_TIMEOUT,
                "model_timeout",
                f"the model did not answer within {settings.CHAT_API_TIMEOUT:g} s; try again later, "
                "or ask an administrator to check the backend",
            ) from None
        except NoBackend as exc:
            CHAT_CALLS.labels("no_backend").inc()
            raise ChatFailed(status.HTTP_503_SERVICE_UNAVAILABLE, "no_backend", str(exc)) from None
        except ModelError as exc:
            CHAT_CALLS.labels("model_failed").inc()
            # The full reason names internal hosts: it goes to the log, not to the caller.
            logger.error("chat API: bot %s: model failed: %s", bot.name, exc)
            advice = (
                "this is usually temporary; try again later"
                if exc.transient
                else "an administrator must check the backend's configuration"
            )
            raise ChatFailed(
                status.HTTP_502_BAD_GATEWAY,
                "model_failed",
                f"the model backend failed to answer ({advice}); the details are in the server log",
            ) from None
        context.append(bot, chat_id, data["user"], data["text"], result.text)
        CHAT_CALLS.labels("answered").inc()
        rule = result.selection.rule
        body = ChatResponse(
            {
                "answer": result.text,
                "bot": bot.name,
                "backend": result.backend.name,
                "rule": result.selection.explanation,
                "rule_id": rule.pk if rule else None,
                "conversation": conversation,
                "latency_ms": round((time.perf_counter() - started) * 1000, 1),
                "model_ms": round(result.model_ms, 1),
            }
        )
        return Response(body.data)
