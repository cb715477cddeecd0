from __future__ import annotations

from django.http import HttpRequest

from audit.models import AuthEvent
from config.clientip import client_ip


def record_auth_event(
    kind: str, request: HttpRequest | None, user=None, username: str = "", detail: str = ""
) -> AuthEvent:
    address = client_ip(request) if request is not None else None
    agent = request.META.get("HTTP_USER_AGENT", "")[:300] if request is not None else ""
    if user is not None and not username:
        username = user.get_username()
    return AuthEvent.objects.create(
        kind=kind,
        user=user if user is not None and user.pk else None,
        username=username[:150],
        remote_addr=str(address) if address else None,
        user_agent=agent,
        detail=detail[:300],
    )
