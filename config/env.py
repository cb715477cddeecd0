"""Typed readers for environment variables.

Each helper refuses a malformed value with ImproperlyConfigured naming the variable, so a
typo in a unit file stops start-up instead of silently falling back to a default.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean; use true or false.")


def env_int(name: str, default: int, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a whole number.") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} must be at least {minimum}.")
    return value


def env_list(name: str, default: str = "") -> list[str]:
    raw = os.environ.get(name, default)
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_networks(name: str, default: str = "") -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    networks = []
    for item in env_list(name, default):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ImproperlyConfigured(
                f"{name} holds {item!r}, which is not an IP address or CIDR (e.g. 10.0.0.0/8)."
            ) from None
    return networks


def env_secret(name: str) -> str | None:
    """A secret from NAME, or from the file named by NAME_FILE (systemd credentials, k8s secrets)."""
    value = os.environ.get(name)
    if value:
        return value.strip()
    path = os.environ.get(f"{name}_FILE")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE={path!r} cannot be read: {exc.strerror}.") from None
    return None


def secret_or_generated(name: str, var_dir: Path, production: bool, generate) -> str:
    """Return the secret NAME; outside production, generate it once into var/ and reuse it.

    In production a missing secret is a deployment mistake (every restart would otherwise
    invalidate sessions or make stored secrets unreadable), so it stops start-up.
    """
    value = env_secret(name)
    if value:
        return value
    if production:
        raise ImproperlyConfigured(f"{name} is not set. SWITCHBOARD_ENV=production requires it (or {name}_FILE).")
    path = var_dir / name.lower()
    if path.exists():
        return path.read_text().strip()
    var_dir.mkdir(parents=True, exist_ok=True)
    tmp = var_dir / f".{name.lower()}.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(generate() + "\n")
    try:
        # link() fails if the name exists, so when gunicorn and celery start together
        # exactly one generated value wins and every process reads that one.
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_text().strip()


def new_django_secret_key() -> str:
    return secrets.token_urlsafe(64)
