"""X-Forwarded-Proto is believed only from TRUSTED_PROXIES (config.clientip): a client
talking plain HTTP to gunicorn's port cannot claim HTTPS, skip the redirect to it and be
served as if it had come through nginx."""

from __future__ import annotations

import ipaddress

import pytest
from django.test import Client

LAN_CLIENT = "10.1.2.3"  # allowed into the console, but not a proxy
NGINX = "127.0.0.1"
LOGIN = "/admin/2fa/login/"


@pytest.fixture
def production(settings, db):
    """The production block of config/settings.py, nginx on this machine trusted."""
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_REDIRECT_EXEMPT = [r"^callback/", r"^healthz$", r"^readyz$", r"^metrics$"]
    settings.SECURE_HSTS_SECONDS = 3600
    settings.TRUSTED_PROXIES = [ipaddress.ip_network(f"{NGINX}/32")]
    settings.ADMIN_ALLOWED_CIDRS = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("127.0.0.0/8")]


def test_a_client_claiming_https_directly_is_redirected_to_https_and_gets_no_hsts(production):
    response = Client().get(LOGIN, REMOTE_ADDR=LAN_CLIENT, HTTP_X_FORWARDED_PROTO="https")
    assert response.status_code == 301
    assert response["Location"] == f"https://testserver{LOGIN}"
    assert "Strict-Transport-Security" not in response


def test_the_trusted_proxy_saying_https_is_believed(production):
    response = Client().get(LOGIN, REMOTE_ADDR=NGINX, HTTP_X_FORWARDED_PROTO="https")
    assert response.status_code == 200
    assert response["Strict-Transport-Security"].startswith("max-age=3600")


def test_the_trusted_proxy_saying_http_is_redirected(production):
    response = Client().get(LOGIN, REMOTE_ADDR=NGINX, HTTP_X_FORWARDED_PROTO="http")
    assert response.status_code == 301
