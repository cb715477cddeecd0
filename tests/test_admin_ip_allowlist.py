"""The console is refused outside the admin allowlist; X-Forwarded-For is believed only
from trusted proxies."""

from __future__ import annotations

import ipaddress
import logging

import pytest
from django.test import RequestFactory, override_settings

from bots.models import AdminAccessRule
from config.clientip import client_ip

OFFICE = [ipaddress.ip_network("10.0.0.0/8")]
PROXY = [ipaddress.ip_network("127.0.0.1/32")]


def status(client, path="/admin/", **meta) -> int:
    return client.get(path, **meta).status_code


@pytest.mark.django_db
class TestAllowlist:
    @pytest.fixture(autouse=True)
    def _office_only(self, settings):
        settings.ADMIN_ALLOWED_CIDRS = OFFICE
        settings.TRUSTED_PROXIES = []

    def test_outsider_is_refused_on_every_console_path_and_logged(self, client, caplog):
        caplog.set_level(logging.WARNING, logger="switchboard.security")
        for path in ("/admin/", "/admin/2fa/login/", "/admin/bots/bot/", "/admin/2fa/enroll/"):
            response = client.get(path, REMOTE_ADDR="203.0.113.5")
            assert response.status_code == 403, path
            assert b"203.0.113.5" in response.content
        assert "console refused: client 203.0.113.5" in caplog.text
        # A refused client never reaches the password form, so it cannot try passwords.
        assert (
            client.post("/admin/2fa/login/", {"username": "a", "password": "b"}, REMOTE_ADDR="203.0.113.5").status_code
            == 403
        )

    def test_insider_reaches_the_sign_in(self, client):
        response = client.get("/admin/", REMOTE_ADDR="10.20.30.40", follow=True)
        assert response.status_code == 200
        assert response.redirect_chain[-1][0].startswith("/admin/2fa/login/")
        assert status(client, "/admin/2fa/login/", REMOTE_ADDR="10.20.30.40") == 200

    def test_access_rule_widens_the_allowlist_only_while_enabled(self, client):
        rule = AdminAccessRule.objects.create(cidr="203.0.113.0/24", description="branch office")
        assert status(client, REMOTE_ADDR="203.0.113.5") == 302
        assert status(client, REMOTE_ADDR="198.51.100.1") == 403
        rule.enabled = False
        rule.save()
        assert status(client, REMOTE_ADDR="203.0.113.5") == 403

    def test_ipv6_rules(self, client):
        AdminAccessRule.objects.create(cidr="2001:db8::/32")
        assert status(client, REMOTE_ADDR="2001:db8::7") == 302
        assert status(client, REMOTE_ADDR="2001:db9::7") == 403

    def test_forged_forwarded_for_from_an_untrusted_peer_is_ignored(self, client):
        assert status(client, REMOTE_ADDR="203.0.113.5", HTTP_X_FORWARDED_FOR="10.0.0.1") == 403

    def test_other_paths_are_not_the_console(self, client):
        assert status(client, "/healthz", REMOTE_ADDR="203.0.113.5") == 200


@pytest.mark.django_db
class TestBehindTrustedProxy:
    @pytest.fixture(autouse=True)
    def _office_behind_proxy(self, settings):
        settings.ADMIN_ALLOWED_CIDRS = OFFICE
        settings.TRUSTED_PROXIES = PROXY

    def test_client_address_comes_from_the_proxy(self, client):
        assert status(client, REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="10.0.0.7") == 302

    def test_outsider_behind_the_proxy_is_refused(self, client):
        assert status(client, REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.9") == 403

    def test_a_forged_left_entry_does_not_help(self, client):
        # nginx appends the real peer; whatever the client sent stands to its left.
        assert status(client, REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="10.0.0.1, 203.0.113.9") == 403

    def test_the_proxy_itself_without_forwarded_for(self, client):
        # 127.0.0.1 is not in OFFICE, so the proxy's own address is refused too.
        assert status(client, REMOTE_ADDR="127.0.0.1") == 403


@pytest.mark.parametrize(
    ("remote", "forwarded", "trusted", "expected"),
    [
        ("203.0.113.5", "", [], "203.0.113.5"),
        ("203.0.113.5", "10.0.0.1", [], "203.0.113.5"),
        ("127.0.0.1", "198.51.100.2", ["127.0.0.1/32"], "198.51.100.2"),
        ("127.0.0.1", "198.51.100.2, 10.1.1.1", ["127.0.0.1/32", "10.0.0.0/8"], "198.51.100.2"),
        ("127.0.0.1", "garbage, 198.51.100.2", ["127.0.0.1/32"], "198.51.100.2"),
        ("127.0.0.1", "198.51.100.2:4711", ["127.0.0.1/32"], "198.51.100.2"),
        ("127.0.0.1", "[2001:db8::1]:443", ["127.0.0.1/32"], "2001:db8::1"),
        ("::ffff:192.0.2.1", "", [], "192.0.2.1"),
    ],
)
def test_client_ip(remote, forwarded, trusted, expected):
    request = RequestFactory().get("/", REMOTE_ADDR=remote, HTTP_X_FORWARDED_FOR=forwarded)
    with override_settings(TRUSTED_PROXIES=[ipaddress.ip_network(n) for n in trusted]):
        assert str(client_ip(request)) == expected
