"""The client's IP address, believing X-Forwarded-For only from trusted proxies."""

from __future__ import annotations

import ipaddress

from django.conf import settings
from django.http import HttpRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _parse(value: str) -> IPAddress | None:
    value = value.strip()
    if value.startswith("[") and "]" in value:  # [v6]:port
        value = value[1 : value.index("]")]
    elif value.count(":") == 1:  # v4:port
        value = value.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def _trusted(address: IPAddress) -> bool:
    return any(address in network for network in settings.TRUSTED_PROXIES)


def client_ip(request: HttpRequest) -> IPAddress | None:
    """Walk X-Forwarded-For from the right while each hop is a trusted proxy.

    The left-most entries are whatever the client chose to send, so only the address
    appended by the last proxy we trust can be believed. A forged header from an
    untrusted peer is ignored entirely.
    """
    cached = getattr(request, "_switchboard_client_ip", False)
    if cached is not False:
        return cached
    address = _parse(request.META.get("REMOTE_ADDR", ""))
    if address is not None and _trusted(address):
        hops = request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")
        for hop in reversed([h for h in hops if h.strip()]):
            parsed = _parse(hop)
            if parsed is None:
                break
            address = parsed
            if not _trusted(parsed):
                break
    request._switchboard_client_ip = address
    return address
