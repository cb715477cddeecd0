"""One dialog turn for a recorded message: context, routing, model, reply, context.

Kept apart from the Celery task so the admin's "send a test message" and the chat API
can run the same turn synchronously.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx

from bots.models import Bot
from routing.backends import Completion, ModelError, complete
from routing.context import ContextStore
from routing.engine import Selection, select_backend
from routing.models import ModelBackend, RoutingRule


@dataclass(frozen=True)
class Answer:
    text: str
    selection: Selection
    backend: ModelBackend  # the one that answered: the selected one or its fallback
    completion: Completion
    history: list[dict[str, str]]
    model_ms: float


_http: httpx.Client | None = None


def http_client() -> httpx.Client:
    """One pooled client per worker process (created after the fork), for the model
    backends and the platforms' send APIs alike."""
    global _http
    if _http is None:
        _http = httpx.Client(timeout=httpx.Timeout(15.0, connect=5.0), follow_redirects=False)
    return _http


def build_messages(bot: Bot, history: list[dict[str, str]], text: str) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": bot.system_prompt}] if bot.system_prompt else []
    return [*messages, *history, {"role": "user", "content": text}]


def answer(
    bot: Bot,
    chat_id: str,
    sender_id: str,
    chat_type: str,
    text: str,
    http: httpx.Client,
    context: ContextStore | None = None,
    rules: list[RoutingRule] | None = None,
) -> Answer:
    """Ask the selected backend (then the rule's fallback) for an answer.
    Raises NoBackend or ModelError; saving the turn is the caller's job, once the
    answer has reached the user. rules: the bot's candidate rules, if already known."""
    context = context or ContextStore()
    history = context.load(bot, chat_id, sender_id)
    selection = select_backend(bot, text, chat_type, rules)
    messages = build_messages(bot, history, text)
    started = time.perf_counter()
    backend = selection.backend
    try:
        completion = complete(backend, messages, http)
    except ModelError as first:
        if selection.fallback is None:
            raise
        backend = selection.fallback
        try:
            completion = complete(backend, messages, http)
        except ModelError as second:
            raise ModelError(
                f"{first}; fallback {backend.name}: {second}",
                transient=second.transient,
                attempts=first.attempts + second.attempts,
            ) from second
    return Answer(completion.text, selection, backend, completion, history, (time.perf_counter() - started) * 1000)
