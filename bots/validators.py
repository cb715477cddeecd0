from __future__ import annotations

import ipaddress

from django.core.exceptions import ValidationError


def validate_cidr(value: str) -> None:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValidationError(f"{value!r} is not an IP address or CIDR (e.g. 203.0.113.0/24).") from None


def validate_cidr_list(value: object) -> None:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValidationError("must be a list of CIDR strings, e.g. [\"203.0.113.0/24\"].")
    for item in value:
        validate_cidr(item)


def ip_in_cidrs(address, cidrs: list[str]) -> bool:
    return any(address in ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)
