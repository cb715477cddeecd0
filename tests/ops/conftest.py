"""Shared by the operations tests: the outside programs they need (nginx, logrotate,
promtool, systemd-analyze), which skip a test where they are missing unless
SWITCHBOARD_REQUIRE_TOOLS=1 (CI) makes that a failure; and certificates."""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
PACKAGES = {"nginx": "nginx", "logrotate": "logrotate", "promtool": "prometheus", "systemd-analyze": "systemd"}


def tool(name: str) -> str:
    """The path of a program the test needs."""
    found = shutil.which(name, path=SEARCH_PATH)
    if found:
        return found
    message = f"{name} is not installed (apt-get install -y {PACKAGES[name]})"
    if os.environ.get("SWITCHBOARD_REQUIRE_TOOLS") == "1":
        pytest.fail(message + "; SWITCHBOARD_REQUIRE_TOOLS=1 makes this a failure")
    pytest.skip(message)


def write_certificate(path, days: float, name: str = "bots.example.com", issuer: str | None = None) -> datetime:
    """A PEM certificate for name valid for `days` more days (negative: expired), self-signed
    unless another issuer name is given; returns its expiry."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    expires = now + timedelta(days=days)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]) if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(min(now, expires) - timedelta(days=1))
        .not_valid_after(expires)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return certificate.not_valid_after_utc
