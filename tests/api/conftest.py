"""Fixtures for the HTTP API tests: keys, a client, a bot answering through a fake
OpenAI-compatible model server."""

from __future__ import annotations

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from bots.models import ApiKey
from routing.models import MatchKind, ModelBackend, RoutingRule
from tests.fakes.model import FakeModel

CHAT_URL = "/api/v1/chat"
EXPORT_URL = "/api/v1/audit/export"


@pytest.fixture(autouse=True)
def _forget_api_limits():
    """Throttle histories and the refusal-recording marks live in Redis, beyond one
    test's database transaction. Only this run's keys (the cache key prefix) go."""
    cache.delete_pattern("throttle_*")
    cache.delete_pattern("api-refused:*")


@pytest.fixture
def issue_key(db):
    def issue(**fields) -> tuple[ApiKey, str]:
        fields.setdefault("name", "crm")
        fields.setdefault("scopes", ["chat"])
        return ApiKey.issue(**fields)

    return issue


@pytest.fixture
def api() -> APIClient:
    return APIClient()


def call(api: APIClient, key: str | None, body: dict | None = None, url: str = CHAT_URL, **extra):
    headers = {"HTTP_AUTHORIZATION": f"Api-Key {key}"} if key is not None else {}
    return api.post(url, body or {}, format="json", **headers, **extra)


@pytest.fixture
def fake_model():
    with FakeModel() as fake:
        yield fake


@pytest.fixture
def chat_bot(make_bot, fake_model):
    """A bot whose default backend is model m-main; messages about invoices go to m-billing."""
    main = ModelBackend.objects.create(name="main", kind="openai", base_url=f"{fake_model.url}/v1", model="m-main")
    billing = ModelBackend.objects.create(
        name="billing", kind="openai", base_url=f"{fake_model.url}/v1", model="m-billing"
    )
    bot = make_bot(name="support", default_backend=main)
    RoutingRule.objects.create(bot=bot, priority=10, match=MatchKind.KEYWORD, pattern="invoice", backend=billing)
    return bot
