"""How the HTTP API reads a request body (REST_FRAMEWORK's DEFAULT_PARSER_CLASSES).

Apart from bots.api_auth: DRF imports its parsers while rest_framework.views is still
loading, and api_auth needs that module."""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions
from rest_framework.parsers import JSONParser

from config import jsonbody


class BodyParser(JSONParser):
    """DRF's JSON parser on config.jsonbody: a body nested too deep, or holding a value
    that cannot be stored, is a parse_error (400) like any other bad JSON, not a
    RecursionError (500). The body is read as UTF-8, as RFC 8259 has it."""

    def parse(self, stream, media_type=None, parser_context=None) -> Any:
        try:
            return jsonbody.loads(stream.read())
        except ValueError as exc:
            raise exceptions.ParseError(f"the body is not JSON this API takes: {exc}") from exc
