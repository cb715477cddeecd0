"""Daily check of API key expiry (Celery beat, CELERY_BEAT_SCHEDULE "check-api-key-expiry").

Expiry itself needs no task: the API refuses a key once expires_at has passed. The task
is for the people: it warns in the log, every day, about keys that stop working within
EXPIRY_WARNING, and marks each key it finds expired (marked_expired_at) so that is
logged once and shows in the audit trail (an auditlog entry by no actor), instead of
being repeated every day for as long as the key row exists. `revoked` stays for an
explicit revocation by an administrator.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from celery import shared_task
from django.db.models import QuerySet
from django.utils import timezone

from bots.models import ApiKey

logger = logging.getLogger("switchboard.api")

EXPIRY_WARNING = timedelta(days=14)


def keys_expiring_soon(now: datetime | None = None, within: timedelta = EXPIRY_WARNING) -> QuerySet[ApiKey]:
    """Working keys that stop working within `within`. A key rotated out (in its grace
    period) is left out: its end is planned, and its successor carries on."""
    now = now or timezone.now()
    return ApiKey.objects.filter(
        revoked=False, replaced_by__isnull=True, expires_at__gt=now, expires_at__lte=now + within
    ).order_by("expires_at")


@shared_task(ignore_result=True)
def check_api_key_expiry() -> dict[str, int]:
    now = timezone.now()
    expiring = list(keys_expiring_soon(now))
    for key in expiring:
        logger.warning(
            "API key %s (%s…) expires at %s UTC; rotate it in the console before then",
            key.name,
            key.prefix,
            f"{key.expires_at:%Y-%m-%d %H:%M}",
        )
    newly_expired = list(ApiKey.objects.filter(revoked=False, expires_at__lte=now, marked_expired_at__isnull=True))
    for key in newly_expired:
        key.marked_expired_at = now
        # save(), not update(): the audit trail should show when a key was found expired.
        key.save(update_fields=["marked_expired_at"])
        logger.warning(
            "API key %s (%s…) expired at %s UTC; requests with it are refused",
            key.name,
            key.prefix,
            f"{key.expires_at:%Y-%m-%d %H:%M}",
        )
    return {"expiring": len(expiring), "expired": len(newly_expired)}
