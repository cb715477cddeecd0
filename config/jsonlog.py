"""Structured logs: one JSON object per line, carrying the request id, bot, platform and
message id of whatever the line is about, with credentials redacted.

The context travels in a contextvar: RequestContextMiddleware fills it for a web request
(its request id, and the platform and bot of a callback), the dialog task adds the
message, bot and platform it works on, and every Celery task starts from an empty one.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import time
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime

from celery.signals import task_prerun
from django.conf import settings
from django.http import HttpRequest, HttpResponse

from config.clientip import client_ip
from config.logredact import redact

_context: ContextVar[dict[str, str] | None] = ContextVar("switchboard_log_context", default=None)

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}

# A request id is taken from the proxy in front (nginx sends its $request_id, 32 hex
# digits) when it is a trusted proxy and the id looks like one; anything else gets a new
# id, so a client cannot write arbitrary text into our logs.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")

access_logger = logging.getLogger("switchboard.access")


def bind_log_context(**fields: object) -> None:
    """Add fields (None values are skipped) to the context of the current request or task."""
    _context.set({**(_context.get() or {}), **{key: str(value) for key, value in fields.items() if value is not None}})


@task_prerun.connect
def _start_task_context(task_id: str | None = None, **_: object) -> None:
    # A worker process runs one task after another: nothing of the last one may leak.
    _context.set({"task_id": task_id} if task_id else {})


class JsonFormatter(logging.Formatter):
    """`{"time": …, "level": …, "logger": …, "message": …, "request_id": …, …}` per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        entry.update(_context.get() or {})
        for key, value in vars(record).items():
            if key in _STANDARD or key.startswith("_"):
                continue
            if isinstance(value, HttpRequest):
                # Django's own lines (django.request, django.security) come after the
                # middleware has finished: the request still knows its id. Its repr would
                # show the query string, where platforms put signatures and tokens.
                entry.setdefault("request_id", getattr(value, "request_id", None))
                value = f"{value.method} {value.path}"
            entry[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        elif record.stack_info:
            entry["stack"] = redact(self.formatStack(record.stack_info))
        entry["pid"] = record.process
        return json.dumps(entry, ensure_ascii=False, default=str)


def _from_trusted_proxy(request: HttpRequest) -> bool:
    try:
        peer = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return any(peer in network for network in settings.TRUSTED_PROXIES)


class RequestContextMiddleware:
    """Give every request an id (the proxy's X-Request-ID when it sends a sane one), put
    it in the log context and the response, and write one access log line per request.

    The access line holds the path but never the query string: platforms sign
    callbacks and pass tokens there."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        offered = request.META.get("HTTP_X_REQUEST_ID", "")
        if not (_REQUEST_ID.match(offered) and _from_trusted_proxy(request)):
            offered = uuid.uuid4().hex
        request_id = offered
        request.request_id = request_id
        token = _context.set({"request_id": request_id})
        started = time.perf_counter()
        try:
            response = self.get_response(request)
            response["X-Request-ID"] = request_id
            access_logger.info(
                "%s %s %s",
                request.method,
                request.path,
                response.status_code,
                extra={
                    "method": request.method,
                    "path": request.path,
                    "status": response.status_code,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 1),
                    "client": str(client_ip(request) or ""),
                },
            )
            return response
        finally:
            _context.reset(token)

    def process_view(self, request: HttpRequest, view_func, view_args, view_kwargs) -> None:
        # The callback URL names the platform and the bot: every line of it says which.
        bind_log_context(platform=view_kwargs.get("platform"), bot=view_kwargs.get("bot_uuid"))
