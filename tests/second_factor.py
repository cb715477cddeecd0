"""Helpers for the second-factor tests that go only through the console's pages and SQL,
as a person and a database dump see them: enrolling by hand, and reading every table."""

from __future__ import annotations

import re
from base64 import b32decode, b32encode
from dataclasses import dataclass
from html import unescape

from django.db import connection
from django.test import Client
from django_otp.oath import TOTP

from tests.fixtures import PASSWORD


@dataclass
class Enrolled:
    seed: bytes
    backup_codes: list[str]

    def app_code(self, offset_steps: int = 0) -> str:
        """What the authenticator app shows (offset_steps periods from now)."""
        totp = TOTP(self.seed)
        totp.time += offset_steps * 30
        return f"{totp.token():06d}"

    def seed_forms(self) -> list[str]:
        """The ways a seed can be written down: hex (either case), base32."""
        hexed = self.seed.hex()
        return [hexed, hexed.upper(), b32encode(self.seed).decode("ascii").rstrip("=")]


def backup_codes_on(page: str) -> list[str]:
    match = re.search(r'id="backup-codes">(.*?)</ul>', page, re.S)
    return re.findall(r"<li>([^<]+)</li>", match.group(1)) if match else []


def enroll_by_hand(client: Client, username: str, password: str = PASSWORD) -> Enrolled:
    """Password, then the key typed from the enrollment page, as a person does; returns
    the seed and the backup codes the pages showed."""
    response = client.post("/admin/2fa/login/", {"username": username, "password": password}, follow=True)
    key = re.search(r'id="manual-key">([^<]*)<', response.content.decode())
    assert key, "no manual key on the enrollment page"
    seed = b32decode(unescape(key.group(1)).replace(" ", "").strip())
    enrolled = Enrolled(seed, [])
    response = client.post("/admin/2fa/enroll/", {"code": enrolled.app_code()}, follow=True)
    enrolled.backup_codes = backup_codes_on(response.content.decode())
    assert len(enrolled.backup_codes) == 10, response.content.decode()[:2000]
    return enrolled


def sign_in_with(username: str, code: str, password: str = PASSWORD) -> Client | None:
    """A new client signed in with this code, or None if the code was refused."""
    client = Client()
    client.post("/admin/2fa/login/", {"username": username, "password": password})
    response = client.post("/admin/2fa/verify/", {"code": code})
    if response.status_code == 302 and "/admin/2fa/" not in response["Location"]:
        return client
    return None


def every_stored_value() -> str:
    """Every value of every table, as text: what a pg_dump of the database holds."""
    quote = connection.ops.quote_name
    values = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f"SELECT * FROM {quote(table)}")  # noqa: S608 (names from the database)
            values.extend(str(value) for row in cursor.fetchall() for value in row)
    return "\n".join(values)
