"""API keys in the console: a new key is shown once (never in a cookie), rotation hands
out a successor with a day of overlap, revocation is immediate, and keys about to
expire are pointed out."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from auditlog.models import LogEntry
from django.utils import timezone

from bots.models import ApiKey

CHANGELIST = "/admin/bots/apikey/"
KEY = re.compile(r'<code class="sb-new-key" data-prefix="([0-9a-f]+)">(sb_[0-9a-f]+_[\w-]+)</code>')


def shown_keys(page) -> list[tuple[str, str]]:
    return KEY.findall(page.content.decode())


def test_a_new_key_is_shown_once_and_only_its_hash_is_kept(console):
    response = console.post(
        f"{CHANGELIST}add/",
        {
            "name": "crm",
            "scopes": ["chat"],
            "allowed_cidrs": '["10.0.0.0/8"]',
            "expires_at_0": "2030-01-01",
            "expires_at_1": "00:00:00",
        },
    )
    assert response.status_code == 302
    # The key travels in no cookie: messages are kept in the session on the server.
    assert not any("sb_" in morsel.value for morsel in response.cookies.values())

    page = console.get(response["Location"])
    [(prefix, key)] = shown_keys(page)
    row = ApiKey.objects.get()
    assert row.prefix == prefix and ApiKey.find(key) == row
    assert key not in row.key_hash and row.key_hash == ApiKey.hash_key(key)
    assert "copy it now, it will not be shown again" in page.content.decode()

    assert shown_keys(console.get(CHANGELIST)) == []
    assert key not in console.get(f"{CHANGELIST}{row.pk}/change/").content.decode()


def test_rotating_gives_a_new_key_and_keeps_the_old_one_for_a_day(console, staff_user):
    old, old_key = ApiKey.issue(name="crm", scopes=["chat"], allowed_cidrs=["10.0.0.0/8"])
    response = console.post(CHANGELIST, {"action": "rotate_keys", "_selected_action": [old.pk]})
    assert response.status_code == 302
    [(prefix, new_key)] = shown_keys(console.get(CHANGELIST))
    new = ApiKey.find(new_key)
    old.refresh_from_db()
    assert new.prefix == prefix and new.name == "crm" and new.scopes == ["chat"]
    assert new.allowed_cidrs == ["10.0.0.0/8"] and new.is_active()
    assert old.replaced_by == new and old.is_active()
    assert abs(old.expires_at - (timezone.now() + timedelta(hours=24))) < timedelta(minutes=1)
    assert not old.is_active(at=timezone.now() + timedelta(hours=24, minutes=1))

    created = LogEntry.objects.get(object_pk=str(new.pk), content_type__model="apikey")
    assert created.action == LogEntry.Action.CREATE and created.actor == staff_user
    assert new_key not in str(created.changes)


def test_a_key_is_rotated_only_once(console):
    old, _ = ApiKey.issue(name="crm")
    first = console.post(CHANGELIST, {"action": "rotate_keys", "_selected_action": [old.pk]}, follow=True)
    assert len(shown_keys(first)) == 1
    response = console.post(CHANGELIST, {"action": "rotate_keys", "_selected_action": [old.pk]}, follow=True)
    assert shown_keys(response) == []
    assert "Not rotated (revoked, expired or rotated already): crm." in response.content.decode()
    assert ApiKey.objects.count() == 2


def test_revoking_stops_a_key_at_once(console):
    key, clear = ApiKey.issue(name="leaked")
    response = console.post(CHANGELIST, {"action": "revoke_keys", "_selected_action": [key.pk]}, follow=True)
    assert "Revoked 1 API key." in response.content.decode()
    assert not ApiKey.find(clear).is_active()


@pytest.fixture
def keys(db):
    now = timezone.now()
    soon, _ = ApiKey.issue(name="soon", scopes=["chat"], expires_at=now + timedelta(days=10))
    later, _ = ApiKey.issue(name="later", scopes=["chat"], expires_at=now + timedelta(days=60))
    gone, _ = ApiKey.issue(name="gone", scopes=["chat"], expires_at=now - timedelta(days=1))
    revoked, _ = ApiKey.issue(name="revoked", scopes=["chat"], expires_at=now + timedelta(days=3), revoked=True)
    return {"soon": soon, "later": later, "gone": gone, "revoked": revoked}


def names(response) -> set[str]:
    return {key.name for key in response.context["cl"].result_list}


def test_keys_expiring_within_14_days_are_pointed_out(console, keys):
    page = console.get(CHANGELIST)
    banner = re.search(r'id="expiring-keys">(.*?)</li>', page.content.decode(), re.S).group(1)
    assert banner.startswith("1 API key expires within 14 days")
    assert names(console.get(CHANGELIST, {"expiry": "soon"})) == {"soon"}
    assert names(console.get(CHANGELIST, {"expiry": "active"})) == {"soon", "later"}
    assert names(console.get(CHANGELIST, {"expiry": "ended"})) == {"gone", "revoked"}
    statuses = dict(
        re.findall(
            r'<th class="field-name"><a [^>]*>(\w+)</a></th>.*?<td class="field-status">(.*?)</td>',
            page.content.decode(),
            re.S,
        )
    )
    assert statuses == {"soon": "expires in 9 days", "later": "active", "gone": "expired", "revoked": "revoked"}


def test_no_banner_without_expiring_keys(console, keys):
    keys["soon"].revoke()
    assert 'id="expiring-keys"' not in console.get(CHANGELIST).content.decode()


def test_a_key_without_a_scope_is_not_issued(console):
    response = console.post(
        f"{CHANGELIST}add/",
        {
            "name": "crm",
            "allowed_cidrs": "[]",
            "expires_at_0": "2030-01-01",
            "expires_at_1": "00:00:00",
        },
    )
    assert response.status_code == 200 and not ApiKey.objects.exists()
    assert response.context["adminform"].form.errors["scopes"] == [
        "Choose at least one scope: a key without one is refused on every call."
    ]
    assert shown_keys(response) == []


def test_the_scopes_are_offered_as_choices(console):
    page = console.get(f"{CHANGELIST}add/").content.decode()
    assert re.findall(r'<input type="checkbox" name="scopes" value="([\w:]+)"', page) == ["chat", "audit:read"]


def test_a_key_left_without_scopes_says_so_in_the_list(console):
    ApiKey.issue(name="old", scopes=[])
    page = console.get(CHANGELIST).content.decode()
    assert '<td class="field-status">no scopes: refused on every call</td>' in page
