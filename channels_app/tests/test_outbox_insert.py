"""The callback's outbox INSERT (channels_app/views.py): a whole row with the model's
defaults, nothing for a re-delivery, and on PostgreSQL a statement prepared once per
connection unless DATABASE_PREPARED_STATEMENTS is off."""

from __future__ import annotations

import secrets
import time

import pytest
from django.db import connection
from django.utils import timezone

from bots.models import Bot
from channels_app.models import InboundMessage, MessageStatus
from tests.fakes.wecom import wecom_callback, wecom_text_xml

PREPARED_INSERTS = (
    "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE 'INSERT INTO \"channels_app_inboundmessage\"%%'"
)


@pytest.fixture
def bot(committed_wecom_bot) -> Bot:
    return committed_wecom_bot


def post(client, bot: Bot, text: str, msg_id: int):
    query, body = wecom_callback(
        bot, wecom_text_xml(bot.app_id, "u1", text, msg_id, 1000002), nonce=secrets.token_hex(6)
    )
    return client.post(f"{bot.callback_path}?{query}", body, content_type="text/xml")


def prepared_inserts() -> int:
    with connection.cursor() as cursor:
        cursor.execute(PREPARED_INSERTS)
        return cursor.fetchone()[0]


def test_a_new_row_is_whole_and_a_redelivery_adds_none(client, bot):
    before = timezone.now()
    assert post(client, bot, "hello", 41).status_code == 200
    assert post(client, bot, "hello", 41).status_code == 200  # the platform's retry: a duplicate
    row = InboundMessage.objects.get()
    assert (
        row.bot_id,
        row.platform_message_id,
        row.chat_id,
        row.chat_type,
        row.sender_id,
        row.text,
        row.mentioned,
    ) == (bot.pk, "41", "u1", "p2p", "u1", "hello", True)  # a direct message addresses the bot
    assert row.raw["event"]["Content"] == "hello" and "reply_context" in row.raw
    assert before <= row.received_at <= timezone.now()
    # Every other column as the model's defaults make it.
    defaults = InboundMessage(bot=bot, platform_message_id="x")
    for field in (
        "status",
        "attempts",
        "error",
        "reply_text",
        "parts_sent",
        "route",
        "backend_id",
        "acked_ms",
        "started_at",
        "replied_at",
        "model_ms",
        "send_ms",
    ):
        assert getattr(row, field) == getattr(defaults, field), field
    assert row.status == MessageStatus.RECEIVED


@pytest.mark.skipif(connection.vendor != "postgresql", reason="prepared statements are PostgreSQL's")
@pytest.mark.parametrize("prepared", [True, False])
def test_the_insert_is_prepared_once_per_connection_unless_turned_off(client, bot, settings, monkeypatch, prepared):
    if not prepared:  # as config/settings.py makes them with DATABASE_PREPARED_STATEMENTS=false
        settings.DATABASE_PREPARED_STATEMENTS = False
        monkeypatch.setitem(connection.settings_dict["OPTIONS"], "prepare_threshold", None)
    connection.close()  # a fresh connection, nothing prepared on it yet
    try:
        for msg_id in range(3):
            assert post(client, bot, f"m{msg_id}", int(time.time() * 1000) + msg_id).status_code == 200
        assert prepared_inserts() == (1 if prepared else 0)
        assert InboundMessage.objects.count() == 3
    finally:
        connection.close()
