"""Request bodies sent with `Transfer-Encoding: chunked`, handed to Django with a length.

Django reads CONTENT_LENGTH bytes of wsgi.input, and none when the header is absent, as
it is for a chunked request. gunicorn decodes the chunks (and says so with
wsgi.input_terminated: its input ends where the body does), so a correctly signed
callback sent chunked reached the view with an empty body and failed its signature
check. Here such a body is read before Django sees the request, at most one byte more
than CALLBACK_MAX_BODY_BYTES (the most any endpoint reads): a longer one is not read on,
and the length it is given says "over the limit", so the callback view answers 413 and
Django's own body check refuses it elsewhere, exactly as for a Content-Length too large.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings

READ_SIZE = 64 * 1024


def is_unmeasured_chunked(environ: dict[str, Any]) -> bool:
    """A chunked body without a length, from a server that ends wsgi.input with it.
    (Without wsgi.input_terminated, reading to the end could wait on the socket.)"""
    return (
        not environ.get("CONTENT_LENGTH")
        and "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        and bool(environ.get("wsgi.input_terminated"))
    )


def read_capped(stream: io.RawIOBase | io.BufferedIOBase, limit: int) -> bytes:
    """The stream to its end, or its first limit + 1 bytes if it is longer."""
    chunks, size = [], 0
    while size <= limit:
        chunk = stream.read(min(READ_SIZE, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


class ChunkedBodies:
    """WSGI middleware around Django's application (config/wsgi.py)."""

    def __init__(self, application: Callable) -> None:
        self.application = application

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        if is_unmeasured_chunked(environ):
            body = read_capped(environ["wsgi.input"], settings.CALLBACK_MAX_BODY_BYTES)
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
        return self.application(environ, start_response)
