"""Fixtures of the WeChat Official Account tests: a bot in each mode, short waits."""

from __future__ import annotations

import pytest

from channels_app.adapters.wechat_mp.tests.support import AES_KEY, APP_ID, SECRET, TOKEN


@pytest.fixture
def make_mp_bot(make_bot):
    def make(mode: str = "safe", customer_service: bool = False, **fields):
        fields.setdefault("app_id", APP_ID)
        fields.setdefault("app_secret", SECRET)
        fields.setdefault("token", TOKEN)
        fields.setdefault("encoding_aes_key", "" if mode == "plain" else AES_KEY)
        return make_bot(platform="wechat_mp", extra={"customer_service_api": customer_service}, **fields)

    return make


@pytest.fixture
def quick_passive(settings):
    """Passive-mode waits shortened, in the same proportions as WeChat's 5 s."""
    settings.WECHAT_PASSIVE_WAIT_MS = 600
    settings.WECHAT_PASSIVE_HOLD_MS = 900
    return settings
