def mask_secret(value: str) -> str:
    """Replace a secret in an audit diff entirely.

    django-auditlog's own mask keeps the second half of the value in clear, which for a
    32-character token is 16 characters an auditor (or a leaked export) should not see.
    The diff still shows that the field changed, and whether it was set or cleared.
    """
    if value in ("", "None"):
        return value
    return "********"
