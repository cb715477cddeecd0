"""The platforms a bot can live on, and what each one's `extra` settings may hold."""

from __future__ import annotations

from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.db import models


class Platform(models.TextChoices):
    FEISHU = "feishu", "Feishu / Lark"
    WECOM = "wecom", "WeCom (企业微信)"
    WECHAT_MP = "wechat_mp", "WeChat Official Account (公众号)"
    DINGTALK = "dingtalk", "DingTalk (钉钉)"
    SLACK = "slack", "Slack"
    TELEGRAM = "telegram", "Telegram"
    WEBHOOK = "webhook", "Generic signed webhook"


@dataclass(frozen=True)
class ExtraField:
    kind: type
    required: bool = False
    help: str = ""


# What each platform keeps in Bot.extra beyond the common credential columns.
EXTRA_SCHEMAS: dict[str, dict[str, ExtraField]] = {
    Platform.FEISHU: {
        "bot_open_id": ExtraField(
            str, False, "the bot's open_id (ou_…); needed only if it may read all group messages"
        ),
    },
    Platform.WECOM: {"agent_id": ExtraField(int, True, "AgentId of the self-built app")},
    Platform.WECHAT_MP: {
        "customer_service_api": ExtraField(bool, False, "account may call message/custom/send"),
    },
    Platform.DINGTALK: {
        "robot_code": ExtraField(str, False, "robotCode; defaults to the one in each callback, then the AppKey"),
        "bot_name": ExtraField(str, False, "the robot's name; a leading @name is removed from group messages"),
    },
    Platform.SLACK: {
        "bot_user_id": ExtraField(
            str, False, "the bot's user ID (U…); by default taken from each event's authorizations"
        ),
    },
    Platform.TELEGRAM: {"bot_username": ExtraField(str, False, "@username used for group mentions")},
    Platform.WEBHOOK: {
        "outbound_url": ExtraField(str, True, "http(s) URL where signed replies are POSTed; redirects not followed"),
    },
}


# The platforms whose EncodingAESKey is a WXBizMsgCrypt key (43 characters of base64);
# Feishu's Encrypt Key, kept in the same column, is any string the admin chose.
WXBIZMSGCRYPT_PLATFORMS = frozenset({Platform.WECOM, Platform.WECHAT_MP})

# The credentials without which a bot cannot work: its callback refuses every request,
# or no reply can be sent. Telegram's App secret is not among them: telegram_set_webhook
# generates one when it is blank.
REQUIRED_CREDENTIALS: dict[str, tuple[str, ...]] = {
    Platform.FEISHU: ("app_id", "app_secret", "token"),
    Platform.WECOM: ("app_id", "app_secret", "token", "encoding_aes_key"),
    Platform.WECHAT_MP: ("app_id", "token"),
    Platform.DINGTALK: ("app_id", "app_secret"),
    Platform.SLACK: ("app_secret", "token"),
    Platform.TELEGRAM: ("token",),
    Platform.WEBHOOK: ("app_secret",),
}


def required_credentials(platform: str, extra: object) -> tuple[str, ...]:
    """The credential fields a bot on `platform` with these extra settings must have."""
    required = REQUIRED_CREDENTIALS.get(platform, ())
    if platform == Platform.WECHAT_MP and isinstance(extra, dict) and extra.get("customer_service_api") is True:
        # message/custom/send needs an access token, fetched with the AppSecret.
        required += ("app_secret",)
    return required


def validate_extra(platform: str, extra: object) -> None:
    """Raise ValidationError naming every problem in a bot's extra settings."""
    if not isinstance(extra, dict):
        raise ValidationError({"extra": "must be a JSON object."})
    schema = EXTRA_SCHEMAS.get(platform, {})
    problems = []
    for key, spec in schema.items():
        if key not in extra:
            if spec.required:
                problems.append(f"{key} is required for {platform} ({spec.help}).")
            continue
        value = extra[key]
        # bool is an int in Python; an agent id of `true` is still a mistake.
        if not isinstance(value, spec.kind) or (spec.kind is int and isinstance(value, bool)):
            problems.append(f"{key} must be of type {spec.kind.__name__}.")
    for key in extra:
        if key not in schema:
            allowed = ", ".join(schema) or "nothing"
            problems.append(f"{key} is not a setting of {platform} (allowed: {allowed}).")
    if problems:
        raise ValidationError({"extra": problems})
