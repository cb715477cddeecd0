"""Secrets are AES-256-GCM ciphertext in the database and readable through a key ring."""

from __future__ import annotations

import base64
import logging
import os

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import override_settings

from bots import encryption
from bots.models import Bot
from routing.models import ModelBackend

SECRET = "corp-secret-7f3a9c1e5b"
TOKEN = "QDG6eK-token-value"
AES_KEY = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"
ROTATED_AES_KEY = "cm90YXRlZC1hZXMta2V5LWZvci10aGUtY29uc29sZS0"


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def raw_column(model, pk: int, column: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {column} FROM {model._meta.db_table} WHERE id = %s", [pk])  # noqa: S608
        return cursor.fetchone()[0]


@pytest.fixture
def bot(make_bot) -> Bot:
    return make_bot(app_id="wx5823bf96d3bd56c7", app_secret=SECRET, token=TOKEN, encoding_aes_key=AES_KEY)


def test_plaintext_is_not_in_the_database(bot):
    for column, plain in [("app_secret", SECRET), ("token", TOKEN), ("encoding_aes_key", AES_KEY)]:
        stored = raw_column(Bot, bot.pk, column)
        assert stored.startswith(f"sb1${encryption.primary_key_id()}$")
        assert plain not in stored
        # Not merely encoded: the base64 body does not contain the secret either.
        assert plain.encode() not in base64.b64decode(stored.split("$")[2])


def test_secrets_read_back_and_hide_in_reprs(bot):
    fresh = Bot.objects.get(pk=bot.pk)
    assert fresh.app_secret == SECRET and str(fresh.token) == TOKEN
    assert SECRET not in repr(fresh.app_secret)
    assert SECRET not in repr(Bot.objects.values("app_secret").get(pk=bot.pk))
    assert SECRET not in repr(fresh) and SECRET not in str(fresh)


def test_each_encryption_uses_a_fresh_nonce(make_bot):
    one = make_bot(name="one", app_secret=SECRET)
    two = make_bot(name="two", app_secret=SECRET)
    assert raw_column(Bot, one.pk, "app_secret") != raw_column(Bot, two.pk, "app_secret")


def test_ciphertext_moved_to_another_column_does_not_decrypt(bot):
    stolen = raw_column(Bot, bot.pk, "app_secret")
    with connection.cursor() as cursor:
        cursor.execute("UPDATE bots_bot SET token = %s WHERE id = %s", [stolen, bot.pk])
    with pytest.raises(encryption.SecretDecryptionError, match="Bot.token"):
        Bot.objects.get(pk=bot.pk)


def test_tampered_ciphertext_is_refused(bot):
    stored = raw_column(Bot, bot.pk, "app_secret")
    prefix, key_id, body = stored.split("$")
    blob = bytearray(base64.b64decode(body))
    blob[-1] ^= 1
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE bots_bot SET app_secret = %s WHERE id = %s",
            [f"{prefix}${key_id}${base64.b64encode(bytes(blob)).decode()}", bot.pk],
        )
    with pytest.raises(encryption.SecretDecryptionError, match="damaged"):
        Bot.objects.get(pk=bot.pk)


def test_empty_secret_stays_empty(make_bot):
    bot = make_bot(app_secret="")
    assert raw_column(Bot, bot.pk, "app_secret") == ""
    assert Bot.objects.get(pk=bot.pk).app_secret == ""


def test_rotation_re_encrypts_under_the_first_key_and_keeps_values(bot, settings):
    backend = ModelBackend.objects.create(name="ds", kind="openai", base_url="http://x/v1", model="m", api_key="sk-abc")
    old_ring = settings.SWITCHBOARD_SECRET_KEYS
    new = new_key()
    old_id = encryption.primary_key_id()
    with override_settings(SWITCHBOARD_SECRET_KEYS=f"{new},{old_ring}"):
        new_id = encryption.primary_key_id()
        assert new_id != old_id
        # Before rotation, rows written under the old key still read fine.
        assert Bot.objects.get(pk=bot.pk).app_secret == SECRET
        call_command("rotate_secret_keys", stdout=open(os.devnull, "w"))
        for column in ("app_secret", "token", "encoding_aes_key"):
            assert encryption.key_id_of(raw_column(Bot, bot.pk, column)) == new_id
        assert encryption.key_id_of(raw_column(ModelBackend, backend.pk, "api_key")) == new_id
    # The old key can now be dropped from the ring.
    with override_settings(SWITCHBOARD_SECRET_KEYS=new):
        fresh = Bot.objects.get(pk=bot.pk)
        assert (fresh.app_secret, fresh.token, fresh.encoding_aes_key) == (SECRET, TOKEN, AES_KEY)
        assert ModelBackend.objects.get(pk=backend.pk).api_key == "sk-abc"


def test_rotation_without_the_old_key_changes_nothing_and_says_why(bot):
    before = raw_column(Bot, bot.pk, "app_secret")
    with override_settings(SWITCHBOARD_SECRET_KEYS=new_key()):
        with pytest.raises(CommandError, match="not in SWITCHBOARD_SECRET_KEYS"):
            call_command("rotate_secret_keys", stdout=open(os.devnull, "w"))
    assert raw_column(Bot, bot.pk, "app_secret") == before


def test_dry_run_writes_nothing(bot, settings):
    before = raw_column(Bot, bot.pk, "app_secret")
    with override_settings(SWITCHBOARD_SECRET_KEYS=f"{new_key()},{settings.SWITCHBOARD_SECRET_KEYS}"):
        call_command("rotate_secret_keys", "--dry-run", stdout=open(os.devnull, "w"))
    assert raw_column(Bot, bot.pk, "app_secret") == before


@pytest.mark.parametrize("ring", ["not-base64!", base64.b64encode(b"short").decode(), " , "])
def test_a_malformed_key_ring_is_refused_with_guidance(ring):
    with override_settings(SWITCHBOARD_SECRET_KEYS=ring):
        with pytest.raises(ImproperlyConfigured, match="SWITCHBOARD_SECRET_KEYS"):
            encryption.key_ring()


def test_secrets_never_reach_the_log(bot, caplog):
    caplog.set_level(logging.DEBUG)
    fresh = Bot.objects.get(pk=bot.pk)
    logging.getLogger("switchboard.test").info("loaded %r with %r", fresh, fresh.app_secret)
    assert SECRET not in caplog.text


def test_console_masks_secrets_and_blank_keeps_them(console, bot):
    url = f"/admin/bots/bot/{bot.pk}/change/"
    page = console.get(url).content.decode()
    for plain in (SECRET, TOKEN, AES_KEY):
        assert plain not in page
    assert "stored — type to replace" in page

    form = {
        "name": bot.name,
        "platform": "wecom",
        "enabled": "on",
        "app_id": bot.app_id,
        "app_secret": "",
        "token": "",
        "encoding_aes_key": ROTATED_AES_KEY,
        "api_base_url": "",
        "extra": '{"agent_id": 1000002}',
        "allowed_ips": "[]",
        "rate_limit_qps": "10",
        "system_prompt": "",
        "default_backend": "",
        "context_ttl": "1800",
        "max_context_turns": "10",
        "require_mention_in_groups": "on",
    }
    response = console.post(url, form)
    assert response.status_code == 302, response.content.decode()[:2000]
    fresh = Bot.objects.get(pk=bot.pk)
    assert fresh.app_secret == SECRET and fresh.token == TOKEN
    assert fresh.encoding_aes_key == ROTATED_AES_KEY
