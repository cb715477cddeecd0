from auditlog.middleware import AuditlogMiddleware

from config.clientip import client_ip


class AuditContextMiddleware(AuditlogMiddleware):
    """auditlog's middleware, with the client IP taken the way the rest of Switchboard
    takes it. The stock one believes the left-most X-Forwarded-For entry from anyone,
    which lets a caller write any address into the audit trail."""

    @staticmethod
    def _get_remote_addr(request):
        address = client_ip(request)
        return str(address) if address else None

    @staticmethod
    def _get_remote_port(request):
        return None
