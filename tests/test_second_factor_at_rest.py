"""The second factor's secrets are not readable in the database: TOTP seeds are encrypted
under the key ring (and re-encrypted by rotate_secret_keys), backup codes are kept only
as keyed hashes; sign-in works as before; old installations' devices are migrated."""

from __future__ import annotations

import base64
import hashlib
import os
from io import StringIO

import pytest
from auditlog.models import LogEntry
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test import Client

from bots import encryption
from bots.otp_devices import AuthenticatorDevice, BackupCode, BackupCodeDevice
from tests.second_factor import backup_codes_on, enroll_by_hand, every_stored_value, sign_in_with


@pytest.fixture
def enrolled(staff_user):
    return enroll_by_hand(Client(), staff_user.username)


def raw_row(table: str, pk: int) -> dict:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {table} WHERE id = %s", [pk])  # noqa: S608
        columns = [column.name for column in cursor.description]
        return dict(zip(columns, cursor.fetchone(), strict=True))


def test_no_seed_and_no_backup_code_is_stored_in_clear(enrolled):
    dump = every_stored_value()
    for form in enrolled.seed_forms():
        assert form not in dump
    for code in enrolled.backup_codes:
        assert code not in dump


def test_the_seed_is_ciphertext_under_the_key_ring_and_codes_are_keyed_hashes(staff_user, enrolled):
    device = AuthenticatorDevice.objects.get(user=staff_user)
    row = raw_row(AuthenticatorDevice._meta.db_table, device.pk)
    assert row["key"].startswith(f"sb1${encryption.primary_key_id()}$")
    assert device.bin_key == enrolled.seed  # and it reads back

    backup = BackupCodeDevice.objects.get(user=staff_user)
    assert raw_row(BackupCodeDevice._meta.db_table, backup.pk)["hmac_key"].startswith("sb1$")
    digests = set(BackupCode.objects.filter(device=backup).values_list("digest", flat=True))
    assert len(digests) == 10 and all(len(d) == 64 for d in digests)
    # A hash anyone could compute from the code alone would be searched through offline.
    assert not digests & {hashlib.sha256(code.encode()).hexdigest() for code in enrolled.backup_codes}


def test_sign_in_with_the_app_and_with_a_backup_code_once(staff_user, enrolled):
    assert sign_in_with(staff_user.username, enrolled.app_code(offset_steps=1)) is not None
    code = enrolled.backup_codes[0]
    assert sign_in_with(staff_user.username, code.upper()) is not None  # as typed from paper
    assert sign_in_with(staff_user.username, code) is None
    assert BackupCode.objects.filter(device__user=staff_user).count() == 9


def test_rotation_re_encrypts_the_seeds_and_sign_in_goes_on(staff_user, enrolled, settings):
    device = AuthenticatorDevice.objects.get(user=staff_user)
    backup = BackupCodeDevice.objects.get(user=staff_user)
    before = raw_row(AuthenticatorDevice._meta.db_table, device.pk)["key"]
    new = base64.b64encode(os.urandom(32)).decode()
    settings.SWITCHBOARD_SECRET_KEYS = f"{new},{settings.SWITCHBOARD_SECRET_KEYS}"

    out = StringIO()
    call_command("rotate_secret_keys", "--dry-run", stdout=out)
    assert "bots.AuthenticatorDevice.key: 1 of 1 re-encrypted (dry run)" in out.getvalue()
    assert "bots.BackupCodeDevice.hmac_key: 1 of 1 re-encrypted (dry run)" in out.getvalue()
    assert raw_row(AuthenticatorDevice._meta.db_table, device.pk)["key"] == before

    out = StringIO()
    call_command("rotate_secret_keys", stdout=out)
    assert "bots.AuthenticatorDevice.key: 1 of 1 re-encrypted" in out.getvalue()
    new_id = encryption.primary_key_id()
    assert encryption.key_id_of(raw_row(AuthenticatorDevice._meta.db_table, device.pk)["key"]) == new_id
    assert encryption.key_id_of(raw_row(BackupCodeDevice._meta.db_table, backup.pk)["hmac_key"]) == new_id

    settings.SWITCHBOARD_SECRET_KEYS = new  # the old key dropped: everything still works
    assert sign_in_with(staff_user.username, enrolled.app_code(offset_steps=1)) is not None
    assert sign_in_with(staff_user.username, enrolled.backup_codes[0]) is not None


def test_audit_diffs_hold_no_seed_and_no_code(staff_user, enrolled, console):
    backup = BackupCodeDevice.objects.get(user=staff_user)
    sign_in_with(staff_user.username, enrolled.backup_codes[0])  # a code used up: a deletion entry
    page = console.post("/admin/2fa/backup-codes/").content.decode()  # a new set
    device = AuthenticatorDevice.objects.get(user=staff_user, name="authenticator app")
    console.post(f"/admin/bots/authenticatordevice/{device.pk}/change/", {"name": "work phone"})
    device.refresh_from_db()
    assert device.name == "work phone"

    entries = list(LogEntry.objects.all())
    logged = "\n".join(f"{entry.changes} {entry.changes_text} {entry.object_repr}" for entry in entries)
    masked = [entry.changes_dict["digest"] for entry in entries if "digest" in entry.changes_dict]
    assert masked and all(change[1] in ("********", "None") for change in masked)
    backup.refresh_from_db()
    new_codes = backup_codes_on(page)
    assert len(new_codes) == 10
    secrets = [*enrolled.seed_forms(), *enrolled.backup_codes, *new_codes, str(backup.hmac_key)]
    secrets += list(BackupCode.objects.values_list("digest", flat=True))
    for secret in secrets:
        assert secret not in logged


# -- an installation from before: django-otp's plugin tables ---------------------------------

LEGACY_SCHEMA = [
    """CREATE TABLE otp_totp_totpdevice (id serial PRIMARY KEY, user_id integer, name varchar(64),
       confirmed boolean, key varchar(80), step smallint, t0 bigint, digits smallint, tolerance smallint,
       drift smallint, last_t bigint, throttling_failure_timestamp timestamptz NULL,
       throttling_failure_count integer, created_at timestamptz NULL, last_used_at timestamptz NULL)""",
    """CREATE TABLE otp_static_staticdevice (id serial PRIMARY KEY, user_id integer, name varchar(64),
       confirmed boolean, throttling_failure_timestamp timestamptz NULL, throttling_failure_count integer,
       created_at timestamptz NULL, last_used_at timestamptz NULL)""",
    "CREATE TABLE otp_static_statictoken (id serial PRIMARY KEY, device_id integer, token varchar(16))",
]
LEGACY_SEED = "3132333435363738393031323334353637383930"  # RFC 6238's test seed, in hex


def migrate_to(target: list[tuple[str, str]]) -> None:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(target)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the legacy tables are written in PostgreSQL's SQL")
@pytest.mark.django_db(transaction=True)
def test_the_migration_encrypts_old_seeds_and_hashes_old_backup_codes(django_user_model):
    user = django_user_model.objects.create_user(username="olga", password="x" * 12, is_staff=True)
    migrate_to([("bots", "0004_api_key_marked_expired")])
    try:
        with connection.cursor() as cursor:
            for statement in LEGACY_SCHEMA:
                cursor.execute(statement)
            cursor.execute(
                "INSERT INTO otp_totp_totpdevice (user_id, name, confirmed, key, step, t0, digits, tolerance, "
                "drift, last_t, throttling_failure_count, created_at) "
                "VALUES (%s, 'phone', true, %s, 30, 0, 6, 1, 0, -1, 0, '2026-01-02T03:04:05Z')",
                [user.pk, LEGACY_SEED],
            )
            cursor.execute(
                "INSERT INTO otp_static_staticdevice (user_id, name, confirmed, throttling_failure_count) "
                "VALUES (%s, 'backup codes', true, 0) RETURNING id",
                [user.pk],
            )
            static_id = cursor.fetchone()[0]
            cursor.executemany(
                "INSERT INTO otp_static_statictoken (device_id, token) VALUES (%s, %s)",
                [(static_id, "c0ffee42"), (static_id, "deadbeef")],
            )
        migrate_to(MigrationExecutor(connection).loader.graph.leaf_nodes())

        device = AuthenticatorDevice.objects.get(user=user)
        assert device.key == LEGACY_SEED and device.confirmed and device.created_at.year == 2026
        backup = BackupCodeDevice.objects.get(user=user)
        assert backup.codes.count() == 2
        dump = every_stored_value()
        for secret in (LEGACY_SEED, "c0ffee42", "deadbeef"):
            assert secret not in dump
        with connection.cursor() as cursor:
            for table in ("otp_totp_totpdevice", "otp_static_staticdevice", "otp_static_statictoken"):
                cursor.execute(f"SELECT count(*) FROM {table}")  # noqa: S608
                assert cursor.fetchone()[0] == 0
        assert backup.verify_token("deadbeef") and not backup.verify_token("deadbeef")
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TABLE IF EXISTS otp_totp_totpdevice, otp_static_staticdevice, otp_static_statictoken")
        migrate_to(MigrationExecutor(connection).loader.graph.leaf_nodes())
