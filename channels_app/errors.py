"""What can go wrong on the way in (a callback) and on the way out (a send)."""

from __future__ import annotations


class CallbackError(Exception):
    """A callback we refuse. `status` is what the caller gets; `reason` goes to the log
    and the metric label, never a stack trace to the caller."""

    status = 400
    reason = "bad_request"

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or self.reason)
        self.detail = detail or self.reason


class MalformedRequest(CallbackError):
    status = 400
    reason = "malformed"


class SignatureInvalid(CallbackError):
    status = 401
    reason = "bad_signature"


class StaleRequest(CallbackError):
    status = 401
    reason = "stale_timestamp"


class ReplayedRequest(CallbackError):
    status = 409
    reason = "replayed"


class TransportError(Exception):
    """A send to a platform failed. Permanent errors (bad credentials, user blocked the
    bot, content refused) are not retried; the rest (timeouts, 5xx, rate limits) are."""

    def __init__(self, detail: str, permanent: bool = False, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.permanent = permanent
        self.retry_after = retry_after
