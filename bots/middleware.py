from __future__ import annotations

import logging

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from prometheus_client import Counter

from bots.models import AdminAccessRule
from bots.validators import ip_in_cidrs
from config.clientip import client_ip

logger = logging.getLogger("switchboard.security")

ADMIN_IP_DENIED = Counter("switchboard_admin_ip_denied_total", "Console requests refused by the admin IP allowlist")

CONSOLE_PREFIX = "/admin/"


def admin_ip_allowed(address) -> bool:
    if address is None:
        return False
    if any(address in network for network in settings.ADMIN_ALLOWED_CIDRS):
        return True
    rules = AdminAccessRule.objects.filter(enabled=True).values_list("cidr", flat=True)
    return ip_in_cidrs(address, list(rules))


class AdminIPAllowlistMiddleware:
    """Refuse the console (/admin/, including its login pages) to clients outside the
    admin allowlist, before any session or password handling happens."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path.startswith(CONSOLE_PREFIX):
            address = client_ip(request)
            if not admin_ip_allowed(address):
                ADMIN_IP_DENIED.inc()
                logger.warning(
                    "console refused: client %s is not in the admin allowlist (path %s)",
                    address,
                    request.path,
                )
                return HttpResponseForbidden(
                    f"The Switchboard console is not reachable from {address}. An administrator "
                    "can add your network to ADMIN_ALLOWED_CIDRS or to an admin access rule.\n",
                    content_type="text/plain",
                )
        return self.get_response(request)
