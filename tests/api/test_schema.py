"""The OpenAPI description of the API at /api/v1/schema/."""

from __future__ import annotations

import pytest
import yaml
from drf_spectacular.validation import validate_schema

pytestmark = pytest.mark.django_db


def test_the_schema_is_valid_openapi_and_describes_the_api(client):
    response = client.get("/api/v1/schema/")
    assert response.status_code == 200
    schema = yaml.safe_load(response.content)
    validate_schema(schema)

    assert schema["components"]["securitySchemes"]["ApiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "Authorization",
        "description": schema["components"]["securitySchemes"]["ApiKey"]["description"],
    }
    chat = schema["paths"]["/api/v1/chat"]["post"]
    assert chat["security"] == [{"ApiKey": []}]
    request = schema["components"]["schemas"]["ChatRequest"]
    assert set(request["required"]) == {"bot", "text", "user"}
    [chat_type] = request["properties"]["chat_type"]["allOf"]
    assert schema["components"]["schemas"][chat_type["$ref"].rsplit("/", 1)[1]]["enum"] == ["p2p", "group"]
    assert set(schema["components"]["schemas"]["ChatResponse"]["properties"]) >= {
        "answer",
        "backend",
        "rule",
        "latency_ms",
        "bot",
    }
    for status in ("400", "401", "403", "404", "409", "415", "429", "502", "503", "504"):
        assert chat["responses"][status]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ApiError"
        }, status

    export = schema["paths"]["/api/v1/audit/export"]["get"]
    assert export["security"] == [{"ApiKey": []}]
    assert {p["name"] for p in export["parameters"]} == {"format", "kind", "since", "until", "model", "actor"}
    assert set(export["responses"]["200"]["content"]) == {"text/csv", "application/jsonl"}


def test_the_schema_is_also_served_as_json(client):
    response = client.get("/api/v1/schema/?format=json")
    assert response.status_code == 200
    assert response.json()["info"]["title"] == "Switchboard API"
