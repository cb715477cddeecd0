"""The test tools on a bot's page: a dry-run test message, and the callback check that
sends the platform's URL verification through our own endpoint."""

from __future__ import annotations

import base64
import html
import os
import re
import secrets

import pytest
from django.test import Client

from bots.console_tools import HANDSHAKE_CHECKS, TEST_CHAT_ID, TEST_SENDER_ID
from bots.models import Bot
from bots.otp_devices import AuthenticatorDevice
from channels_app.models import InboundMessage
from channels_app.registry import registered
from routing.context import ContextStore
from routing.models import ModelBackend, RoutingRule
from tests.fakes.model import FakeModel
from tests.fakes.wecom import FakeWeCom
from tests.fixtures import PASSWORD, sign_in


def aes_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()[:43]


@pytest.fixture
def model():
    with FakeModel() as fake:
        yield fake


@pytest.fixture
def wecom():
    with FakeWeCom() as fake:
        yield fake


@pytest.fixture
def bot(db, model, wecom) -> Bot:
    main = ModelBackend.objects.create(name="main", kind="openai", base_url=f"{model.url}/v1", model="m-main")
    billing = ModelBackend.objects.create(name="billing", kind="openai", base_url=f"{model.url}/v1", model="m-bill")
    bot = Bot.objects.create(
        name="helpdesk",
        platform="wecom",
        app_id="wwcorp0001",
        app_secret="corp-secret",
        token=secrets.token_hex(8),
        encoding_aes_key=aes_key(),
        api_base_url=wecom.url,
        extra={"agent_id": 1000002},
        default_backend=main,
        system_prompt="Answer briefly.",
    )
    RoutingRule.objects.create(bot=bot, priority=10, match="keyword", pattern="invoice", backend=billing)
    yield bot
    ContextStore().clear(bot, "zhangsan", "zhangsan")
    ContextStore().clear(bot, TEST_CHAT_ID, TEST_SENDER_ID)


def send_test_message(console, bot: Bot, text: str, **fields) -> str:
    response = console.post(f"/admin/bots/bot/{bot.pk}/test-message/", {"text": text, "chat_type": "p2p", **fields})
    assert response.status_code == 200
    return html.unescape(response.content.decode())


def text_of(page: str, element_id: str) -> str:
    """The text of an element, tags removed and white space collapsed."""
    match = re.search(rf'id="{element_id}">(.*?)</(?:td|div|pre)>', page, re.S)
    assert match, f"no #{element_id} on the page"
    return " ".join(re.sub(r"<[^>]+>", " ", match.group(1)).split())


def test_a_test_message_shows_the_rule_backend_context_answer_and_latency(console, bot, model, wecom):
    page = send_test_message(console, bot, "where is my invoice?")
    rule = RoutingRule.objects.get()
    assert text_of(page, "test-route") == f"rule {rule}"
    assert text_of(page, "test-backend") == "billing"
    assert text_of(page, "test-answer") == "[m-bill] where is my invoice? (history=0)"
    assert text_of(page, "test-context") == "none (a new conversation)"
    assert "system: Answer briefly." in text_of(page, "test-prompt")
    assert re.fullmatch(r"model \d+ ms, whole turn \d+ ms", text_of(page, "test-latency"))
    assert len(model.received(r"/chat/completions")) == 1

    # A dry run: nothing reached the platform, and the test conversation stays empty.
    assert wecom.received() == []
    assert ContextStore().load(bot, TEST_CHAT_ID, TEST_SENDER_ID) == []
    page = send_test_message(console, bot, "hello")
    assert text_of(page, "test-backend") == "main"
    assert text_of(page, "test-route") == "the bot's default backend"
    assert text_of(page, "test-answer") == "[m-main] hello (history=0)"


def test_a_test_message_can_use_a_real_conversations_context_without_changing_it(console, bot, model):
    context = ContextStore()
    context.append(bot, "zhangsan", "zhangsan", "my name is Zhang", "Hello Zhang!")
    page = send_test_message(console, bot, "what is my name?", chat_id="zhangsan", sender_id="zhangsan")
    assert text_of(page, "test-context") == "user : my name is Zhang assistant : Hello Zhang!"
    assert text_of(page, "test-answer") == "[m-main] what is my name? (history=2)"
    assert len(context.load(bot, "zhangsan", "zhangsan")) == 2


def test_a_test_message_says_plainly_why_there_is_no_answer(console, bot, model):
    RoutingRule.objects.all().delete()
    bot.default_backend = None
    bot.save()
    page = send_test_message(console, bot, "hello")
    assert "no routing rule matched and it has no enabled default backend; set one in the console" in text_of(
        page, "test-error"
    )
    assert model.received() == []

    ModelBackend.objects.filter(name="main").update(base_url="http://127.0.0.1:9/v1")
    bot.default_backend = ModelBackend.objects.get(name="main")
    bot.save()
    page = send_test_message(console, bot, "hello")
    assert text_of(page, "test-error").startswith("the model call failed:")
    assert text_of(page, "test-backend") == "main"


def test_the_tools_are_for_those_who_may_change_the_bot(bot, django_user_model):
    from django.contrib.auth.models import Permission

    viewer = django_user_model.objects.create_user(username="viv", password=PASSWORD, is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_bot"))
    client = Client()
    sign_in(client, "viv", AuthenticatorDevice.objects.create(user=viewer, name="phone", confirmed=True))
    assert client.get(f"/admin/bots/bot/{bot.pk}/change/").status_code == 200
    for tool in ["test-message", "check-callback", "reveal"]:
        assert client.get(f"/admin/bots/bot/{bot.pk}/{tool}/").status_code == 403
    assert client.post(f"/admin/bots/bot/{bot.pk}/test-message/", {"text": "hi", "chat_type": "p2p"}).status_code == 403


# -- check callback setup ----------------------------------------------------------------


def check(console, bot: Bot) -> tuple[str, list[tuple[str, str]]]:
    response = console.post(f"/admin/bots/bot/{bot.pk}/check-callback/")
    assert response.status_code == 200
    page = html.unescape(response.content.decode())
    summary = re.search(r'id="check-summary">(.*?)</h2>', page).group(1)
    findings = re.findall(r'class="sb-finding (\w+)"><strong>(.*?)</strong>(?:<br>(.*?))?</div>', page, re.S)
    return summary, [(status, f"{title} {detail}".strip()) for status, title, detail in findings]


def problems(findings) -> list[str]:
    return [text for status, text in findings if status == "problem"]


def test_a_wecom_bot_set_up_right_passes_the_check(console, bot):
    page = console.get(f"/admin/bots/bot/{bot.pk}/check-callback/").content.decode()
    assert f'id="callback-url">http://testserver/callback/wecom/{bot.uuid}/</code>' in page
    summary, findings = check(console, bot)
    assert summary == "The callback setup works."
    [ok] = [text for status, text in findings if status == "ok"]
    assert ok.startswith("Sent a GET with msg_signature, timestamp, nonce and an encrypted echostr")
    assert "answered the way WeCom (企业微信) expects" in ok
    assert any("clock reads" in text for _, text in findings)
    # Nothing was recorded or queued: a handshake is answered, never stored.
    assert not InboundMessage.objects.exists()


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"encoding_aes_key": "too-short"}, "EncodingAESKey is not usable"),
        ({"encoding_aes_key": ""}, "EncodingAESKey is empty"),
        ({"token": ""}, "Token is empty"),
        ({"app_id": ""}, "App ID is empty. For WeCom it holds the CorpID"),
        ({"enabled": False}, "The bot is disabled"),
    ],
)
def test_a_wecom_bot_set_up_wrong_is_told_what_to_fix(console, bot, changes, expected):
    for name, value in changes.items():
        setattr(bot, name, value)
    bot.save()
    summary, findings = check(console, bot)
    assert summary == "The callback setup has problems."
    assert any(text.startswith(expected) for text in problems(findings)), findings
    assert any("The handshake was not tried" in text for _, text in findings)


def test_a_refusal_by_our_endpoint_is_explained(console, bot, settings):
    # A window of 0 s: the endpoint refuses even our own fresh timestamp as stale.
    settings.CALLBACK_TIMESTAMP_WINDOW = 0
    summary, findings = check(console, bot)
    assert summary == "The callback setup has problems."
    [problem] = problems(findings)
    assert "this server's clock is wrong" in problem and "timedatectl set-ntp true" in problem


def test_an_answer_that_is_not_the_bare_echo_is_explained(console, bot, settings):
    # Something between the platform and the handshake changes what is answered: here,
    # a middleware that wraps every response (as a misconfigured proxy or error page would).
    settings.MIDDLEWARE = ["tests.console.test_test_tools.WrapEveryAnswer", *settings.MIDDLEWARE]
    summary, findings = check(console, bot)
    [problem] = problems(findings)
    assert "WeCom accepts only the bare decrypted echostr" in problem


class WrapEveryAnswer:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if request.path.startswith("/callback/") and response.status_code == 200:
            response.content = b'"' + response.content + b'"\n'
        return response


def test_the_check_calls_from_inside_the_bots_allowlist(console, bot):
    bot.allowed_ips = ["203.0.113.0/24"]
    bot.save()
    summary, findings = check(console, bot)
    assert summary == "The callback setup works."
    assert any(text.startswith("Only callbacks from 203.0.113.0/24 are accepted.") for _, text in findings)


@pytest.mark.parametrize("encrypt_key", ["", "feishu-encrypt-key-1234"])
def test_a_feishu_bot_passes_with_or_without_an_encrypt_key(console, encrypt_key):
    bot = Bot.objects.create(
        name="lark", platform="feishu", app_id="cli_1", token="verify-token-1", encoding_aes_key=encrypt_key
    )
    summary, findings = check(console, bot)
    assert summary == "The callback setup works."
    [ok] = [text for status, text in findings if status == "ok"]
    assert ("encrypted with the Encrypt Key and signed" in ok) is bool(encrypt_key)
    assert any("No Encrypt Key is stored" in text for _, text in findings) is not bool(encrypt_key)


def test_a_feishu_bot_without_its_verification_token_is_told_so(console):
    bot = Bot.objects.create(name="lark", platform="feishu", app_id="cli_1", token="")
    summary, findings = check(console, bot)
    assert problems(findings) == [
        "Token is empty. For Feishu it holds the Verification Token, from Events & Callbacks → Encryption Strategy."
    ]


def test_a_platform_without_a_handshake_check_says_so(console):
    unchecked = sorted(set(registered()) - set(HANDSHAKE_CHECKS))
    if not unchecked:
        pytest.skip("every registered platform has a handshake check")
    bot = Bot.objects.create(name="other", platform=unchecked[0], extra={})
    _summary, findings = check(console, bot)
    assert any(status == "info" and "There is no handshake check for" in text for status, text in findings)
