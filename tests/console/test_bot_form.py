"""The bot form: secrets typed into a form that fails validation come back in that same
response (and only there), a bot without the credentials its platform needs is not
reported "added successfully", no uuid is shown before the bot has one, and an
EncodingAESKey is WXBizMsgCrypt's 43 characters."""

from __future__ import annotations

import re
import uuid
from html.parser import HTMLParser

import pytest
from django.contrib.messages import get_messages
from django.core.exceptions import ValidationError
from django.utils.text import capfirst
from hypothesis import given, settings
from hypothesis import strategies as st

from bots.models import Bot
from bots.platforms import REQUIRED_CREDENTIALS, Platform
from bots.validators import validate_encoding_aes_key
from channels_app.crypto import InvalidEncodingAESKey, decode_encoding_aes_key
from tests.test_audit_trail import bot_form

ADD = "/admin/bots/bot/add/"
SECRETS = {
    "app_secret": "corp-secret-typed-once-5d1e",
    "token": "callback-token-typed-once",
    "encoding_aes_key": "dHlwZWQtb25jZS1lbmNvZGluZy1hZXMta2V5LWZvcm0",
}
SECRET_NAMES = list(SECRETS)
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class _Inputs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.inputs: dict[str, dict[str, str | None]] = {}

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "input" and attributes.get("name"):
            self.inputs[attributes["name"]] = attributes


def inputs(response) -> dict[str, dict[str, str | None]]:
    """The form's <input> elements by name, with their attributes, as a browser reads them."""
    parser = _Inputs()
    parser.feed(response.content.decode())
    return parser.inputs


def messages_of(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def save(console, form: dict, url: str = ADD) -> tuple[str, list[str]]:
    """Submit the form and follow the redirect as a browser does (which shows, and so
    uses up, the messages). Returns where it went and the messages shown there."""
    response = console.post(url, form)
    assert response.status_code == 302, response.content.decode()[:2000]
    shown = console.get(response["Location"])
    return response["Location"], [str(m) for m in shown.context["messages"]]


def wecom_form(name: str = "helpdesk", **changes) -> dict:
    return bot_form(name, **{**SECRETS, **changes})


# -- a validation error keeps what was typed --------------------------------------------


def test_secrets_typed_survive_a_validation_error_and_are_saved_with_the_fix(console):
    refused = console.post(ADD, wecom_form(extra="{}"))  # WeCom without its agent_id
    assert refused.status_code == 200 and not Bot.objects.exists()
    assert "agent_id is required for wecom" in refused.content.decode()
    # The page that carries them back is kept by no cache.
    assert "no-store" in refused["Cache-Control"]
    shown = inputs(refused)
    for name, typed in SECRETS.items():
        assert shown[name]["type"] == "password" and shown[name]["value"] == typed
    assert "Leave blank to keep the stored value" not in refused.content.decode()

    # The admin fixes the error and saves: the browser sends the inputs as they are.
    resubmitted = {**wecom_form(extra='{"agent_id": 1000002}'), **{n: shown[n]["value"] for n in SECRET_NAMES}}
    saved = console.post(ADD, resubmitted)
    assert saved.status_code == 302
    bot = Bot.objects.get(name="helpdesk")
    assert {name: str(getattr(bot, name)) for name in SECRET_NAMES} == SECRETS
    assert any("was added successfully" in m for m in messages_of(saved))


def test_a_stored_secret_is_never_rendered_not_even_after_a_validation_error(console, make_bot):
    bot = make_bot(name="helpdesk", app_id="ww0001", **SECRETS)
    change = f"/admin/bots/bot/{bot.pk}/change/"
    page = console.get(change)
    refused = console.post(
        change, bot_form("helpdesk", app_secret="", token="", encoding_aes_key="", rate_limit_qps="0")
    )
    assert refused.status_code == 200 and "rate_limit_qps" in refused.context["adminform"].form.errors
    for response in (page, refused):
        body = response.content.decode()
        for typed in SECRETS.values():
            assert typed not in body
        assert all(not inputs(response)[name].get("value") for name in SECRET_NAMES)
        assert "stored — type to replace" in body and "Leave blank to keep the stored value" in body


def test_a_secret_typed_before_a_validation_error_is_not_in_a_page_served_later(console):
    console.post(ADD, wecom_form(extra="{}"))
    for page in (console.get(ADD), console.get("/admin/bots/bot/")):
        for typed in SECRETS.values():
            assert typed not in page.content.decode()


# -- credentials the platform needs ------------------------------------------------------


def test_a_wecom_bot_saved_without_its_secrets_is_not_reported_added_successfully(console):
    # Saved: each platform's setup creates the bot before the platform hands out all
    # its credentials. But the admin lands on the bot's page, told what is missing.
    response = console.post(ADD, wecom_form(app_secret="", token="", encoding_aes_key=""))
    bot = Bot.objects.get(name="helpdesk")
    assert response.status_code == 302 and response["Location"] == f"/admin/bots/bot/{bot.pk}/change/"
    [message] = messages_of(response)
    assert "added successfully" not in message
    assert message == (
        "The bot “helpdesk” was added, but it cannot work yet. WeCom (企业微信) needs App secret, Token, "
        "EncodingAESKey: until they are set, its callbacks are refused and no reply can be sent."
    )
    page = console.get(response["Location"]).content.decode()
    assert "needs App secret, Token, EncodingAESKey" in re.search(r'id="missing-credentials">(.*?)</p>', page).group(1)


@pytest.mark.parametrize("platform", list(Platform))
def test_every_platform_says_which_required_credential_is_missing(console, platform):
    extra = {"wecom": '{"agent_id": 1}', "webhook": '{"outbound_url": "https://example.com/hook"}'}.get(platform, "{}")
    complete = bot_form("bot", platform=platform, extra=extra, app_id="app-1", **SECRETS)
    for name in REQUIRED_CREDENTIALS[platform]:
        _, [message] = save(console, {**complete, "name": f"without-{name}", name: ""})
        label = capfirst(Bot._meta.get_field(name).verbose_name)
        assert f"was added, but it cannot work yet. {Platform(platform).label} needs {label}:" in message
    location, [message] = save(console, complete)
    assert location == "/admin/bots/bot/"
    assert "was added successfully" in message and "cannot work" not in message


def test_a_change_that_leaves_a_credential_empty_is_not_reported_changed_successfully(console, make_bot):
    bot = make_bot(name="helpdesk", app_id="ww0001", **{**SECRETS, "token": ""})
    change = f"/admin/bots/bot/{bot.pk}/change/"
    location, messages = save(console, bot_form("helpdesk", app_secret="", encoding_aes_key="", token=""), change)
    assert location == change
    assert messages == [
        "The bot “helpdesk” was changed, but it cannot work yet. WeCom (企业微信) needs Token: until they are set, "
        "its callbacks are refused and no reply can be sent."
    ]


def test_a_wechat_account_that_sends_through_the_customer_service_api_needs_its_app_secret(console):
    form = bot_form("mp", platform="wechat_mp", **{**SECRETS, "app_secret": ""}, extra='{"customer_service_api": true}')
    _, [message] = save(console, form)
    assert "WeChat Official Account (公众号) needs App secret:" in message
    _, [message] = save(console, {**form, "name": "mp-passive", "extra": '{"customer_service_api": false}'})
    assert "was added successfully" in message and "cannot work" not in message


def test_blank_keeps_a_stored_secret_and_counts_as_set(console, make_bot):
    bot = make_bot(name="helpdesk", app_id="ww0001", **SECRETS)
    response = console.post(
        f"/admin/bots/bot/{bot.pk}/change/",
        bot_form("helpdesk", app_secret="", token="", encoding_aes_key="", system_prompt="hi"),
    )
    assert response["Location"] == "/admin/bots/bot/"
    bot.refresh_from_db()
    assert bot.system_prompt == "hi" and {n: str(getattr(bot, n)) for n in SECRET_NAMES} == SECRETS


# -- the uuid ----------------------------------------------------------------------------


def test_the_add_page_shows_no_uuid_and_the_saved_bots_callback_url_answers(console, client):
    page = console.get(ADD).content.decode()
    assert UUID.findall(page) == []
    assert page.count("assigned when saved") == 2  # the uuid and the callback URL

    assert console.post(ADD, wecom_form()).status_code == 302
    bot = Bot.objects.get(name="helpdesk")
    change_page = console.get(f"/admin/bots/bot/{bot.pk}/change/").content.decode()
    [shown] = re.findall(r"<code>(/callback/wecom/[0-9a-f-]+/)</code>", change_page)
    assert shown == bot.callback_path and str(bot.uuid) in change_page
    assert client.get(shown).status_code != 404
    assert client.get(f"/callback/wecom/{uuid.uuid4()}/").status_code == 404


# -- EncodingAESKey ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        (SECRETS["encoding_aes_key"][:42], "must be exactly 43 characters, not 42"),
        (SECRETS["encoding_aes_key"] + "=", "must be exactly 43 characters, not 44"),
        (SECRETS["encoding_aes_key"][:42] + "-", "only letters, digits, + and /"),
    ],
)
@pytest.mark.parametrize("platform", ["wecom", "wechat_mp"])
def test_an_encoding_aes_key_must_be_43_base64_characters(console, key, problem, platform):
    extra = '{"agent_id": 1}' if platform == "wecom" else "{}"
    response = console.post(ADD, wecom_form(platform=platform, extra=extra, encoding_aes_key=key))
    assert response.status_code == 200 and not Bot.objects.exists()
    [error] = response.context["adminform"].form.errors["encoding_aes_key"]
    assert problem in error and key not in error


def test_a_feishu_encrypt_key_may_be_any_string(console):
    form = wecom_form(platform="feishu", extra="{}", app_id="cli_a1", encoding_aes_key="my encrypt key")
    assert console.post(ADD, form).status_code == 302
    assert Bot.objects.get(name="helpdesk").encoding_aes_key == "my encrypt key"


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(alphabet="ABCXYZabcxyz0189+/=-_ \n", min_size=40, max_size=46),
        st.text(min_size=0, max_size=50),
    )
)
def test_the_form_accepts_exactly_the_keys_the_cipher_can_use(key):
    try:
        decode_encoding_aes_key(key)
        usable = True
    except InvalidEncodingAESKey:
        usable = False
    try:
        validate_encoding_aes_key(key)
        accepted = True
    except ValidationError:
        accepted = False
    assert accepted == usable, repr(key)
