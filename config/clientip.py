"""The client's IP address and scheme, believing X-Forwarded-For and X-Forwarded-Proto
only from trusted proxies."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

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


def peer_is_trusted_proxy(request: HttpRequest) -> bool:
    """Whether the connection itself comes from one of TRUSTED_PROXIES."""
    peer = _parse(request.META.get("REMOTE_ADDR", ""))
    return peer is not None and _trusted(peer)


class ForwardedProtoMiddleware:
    """X-Forwarded-Proto only from a trusted proxy.

    SECURE_PROXY_SSL_HEADER makes Django take the header from whoever sends it: a client
    talking plain HTTP to gunicorn's port could claim HTTPS, and so skip the redirect to
    HTTPS and be handed HSTS and https:// URLs as if it had come through nginx. Dropped
    here, first of all middleware, every later request.is_secure() sees the truth."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if "HTTP_X_FORWARDED_PROTO" in request.META and not peer_is_trusted_proxy(request):
            del request.META["HTTP_X_FORWARDED_PROTO"]
        return self.get_response(request)
