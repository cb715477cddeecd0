"""API keys: stored as a hash, found by their prefix, rotated with a grace period."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from bots.models import ApiKey


@pytest.mark.django_db
def test_only_the_hash_is_stored_and_the_key_finds_its_row():
    row, key = ApiKey.issue(name="crm", scopes=["chat"])
    assert key.startswith(f"sb_{row.prefix}_") and key not in (row.key_hash, row.prefix)
    assert ApiKey.find(key) == row
    assert ApiKey.find(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert ApiKey.find(f"sb_{row.prefix}_guess") is None
    assert ApiKey.find("not-a-key") is None


@pytest.mark.django_db
def test_default_expiry_is_ninety_days():
    row, _ = ApiKey.issue(name="crm")
    assert timedelta(days=89, hours=23) < row.expires_at - timezone.now() <= timedelta(days=90)
    assert row.is_active()
    assert not row.is_active(at=timezone.now() + timedelta(days=91))


@pytest.mark.django_db
def test_rotation_keeps_the_old_key_for_the_grace_period_only():
    old, old_key = ApiKey.issue(name="crm", scopes=["chat", "audit:read"], allowed_cidrs=["10.0.0.0/8"])
    new, new_key = old.rotate(grace=timedelta(hours=2))
    old.refresh_from_db()
    assert ApiKey.find(new_key) == new and ApiKey.find(old_key) == old and new_key != old_key
    assert (new.scopes, new.allowed_cidrs, new.name) == (["chat", "audit:read"], ["10.0.0.0/8"], "crm")
    assert old.replaced_by == new
    assert old.is_active(at=timezone.now() + timedelta(hours=1))
    assert not old.is_active(at=timezone.now() + timedelta(hours=3))
    assert new.is_active(at=timezone.now() + timedelta(days=30))


@pytest.mark.django_db
def test_revoked_key_is_inactive():
    row, _ = ApiKey.issue(name="crm")
    row.revoke()
    assert not ApiKey.objects.get(pk=row.pk).is_active()


@pytest.mark.django_db
@pytest.mark.parametrize("scopes", [[], None, "chat"])
def test_a_key_needs_a_list_of_at_least_one_scope(scopes):
    row = ApiKey(name="crm", scopes=scopes)
    row.assign_new_key()
    with pytest.raises(ValidationError) as raised:
        row.full_clean()
    assert raised.value.message_dict["scopes"] == [
        "Choose at least one scope: a key without one is refused on every call."
    ]
