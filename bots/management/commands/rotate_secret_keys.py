"""Re-encrypt every stored secret under the first key of SWITCHBOARD_SECRET_KEYS."""

from __future__ import annotations

from django.apps import apps
from django.core.management.base import BaseCommand, CommandError
from django.db import connection, transaction

from bots import encryption
from bots.fields import EncryptedTextField


def encrypted_columns():
    """(model, field) for every EncryptedTextField of every installed model."""
    for model in apps.get_models():
        for field in model._meta.concrete_fields:
            if isinstance(field, EncryptedTextField):
                yield model, field


class Command(BaseCommand):
    help = (
        "Re-encrypt every stored secret under the first key in SWITCHBOARD_SECRET_KEYS. "
        "Put the new key first, keep the old ones after it, run this, then drop the old keys."
    )

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="count what would change, write nothing")

    def handle(self, *args, dry_run: bool = False, **options):
        primary = encryption.primary_key_id()
        self.stdout.write(f"Primary key: {primary} ({len(encryption.key_ring())} key(s) in the ring)")
        total = 0
        quote = connection.ops.quote_name
        with transaction.atomic():
            for model, field in encrypted_columns():
                table, column, pk = model._meta.db_table, field.column, model._meta.pk.column
                # Raw SQL: the ORM would hand us decrypted values, and we must see (and
                # write) the stored ciphertext without touching updated_at or the audit log.
                with connection.cursor() as cursor:
                    cursor.execute(
                        f"SELECT {quote(pk)}, {quote(column)} FROM {quote(table)} "  # noqa: S608 (names from the model)
                        f"WHERE {quote(column)} <> ''"
                    )
                    rows = cursor.fetchall()
                stale = [(row_pk, stored) for row_pk, stored in rows if encryption.key_id_of(stored) != primary]
                for row_pk, stored in stale:
                    try:
                        plain = encryption.decrypt(stored, field.encryption_context)
                    except encryption.SecretDecryptionError as exc:
                        raise CommandError(
                            f"{exc} (row {row_pk}). Nothing was changed: keep the old key in "
                            "SWITCHBOARD_SECRET_KEYS, after the new one, until rotation succeeds."
                        ) from None
                    if not dry_run:
                        with connection.cursor() as cursor:
                            cursor.execute(
                                f"UPDATE {quote(table)} SET {quote(column)} = %s WHERE {quote(pk)} = %s",  # noqa: S608
                                [encryption.encrypt(plain, field.encryption_context), row_pk],
                            )
                if rows:
                    self.stdout.write(
                        f"  {model._meta.label}.{field.name}: {len(stale)} of {len(rows)} re-encrypted"
                        + (" (dry run)" if dry_run else "")
                    )
                total += len(stale)
        verb = "would be re-encrypted" if dry_run else "re-encrypted"
        self.stdout.write(self.style.SUCCESS(f"{total} secret(s) {verb}."))
