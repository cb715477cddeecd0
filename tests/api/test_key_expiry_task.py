"""The daily beat task: warn about keys expiring within 14 days, mark expired ones once."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from auditlog.models import LogEntry
from django.conf import settings
from django.utils import timezone

from bots.models import ApiKey
from bots.tasks import check_api_key_expiry, keys_expiring_soon

pytestmark = pytest.mark.django_db


def issue(name: str, expires_in: timedelta, **fields) -> ApiKey:
    return ApiKey.issue(name=name, expires_at=timezone.now() + expires_in, **fields)[0]


def test_expiring_keys_are_warned_about_and_expired_keys_marked_once(caplog):
    soon = issue("soon", timedelta(days=5))
    issue("later", timedelta(days=30))
    expired = issue("expired", -timedelta(days=1))
    revoked = issue("revoked", -timedelta(days=1), revoked=True)
    rotated_out = issue("rotated", timedelta(hours=3))
    rotated_out.replaced_by = issue("successor", timedelta(days=90))
    rotated_out.save()

    assert list(keys_expiring_soon()) == [soon]
    with caplog.at_level(logging.WARNING, logger="switchboard.api"):
        assert check_api_key_expiry() == {"expiring": 1, "expired": 1}

    assert f"API key soon ({soon.prefix}…) expires at" in caplog.text
    assert f"API key expired ({expired.prefix}…) expired at" in caplog.text
    assert "later" not in caplog.text and "rotated" not in caplog.text
    expired.refresh_from_db()
    revoked.refresh_from_db()
    assert expired.marked_expired_at is not None and not expired.revoked
    assert revoked.marked_expired_at is None
    # The audit trail shows when the key was found expired.
    entry = LogEntry.objects.get_for_object(expired).order_by("-timestamp").first()
    assert entry.actor is None and "marked_expired_at" in entry.changes_dict

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="switchboard.api"):
        assert check_api_key_expiry() == {"expiring": 1, "expired": 0}
    assert "expired at" not in caplog.text


def test_the_task_is_scheduled_daily():
    entry = settings.CELERY_BEAT_SCHEDULE["check-api-key-expiry"]
    assert entry["task"] == check_api_key_expiry.name == "bots.tasks.check_api_key_expiry"
    assert entry["schedule"].remaining_estimate(timezone.now()) <= timedelta(days=1)
