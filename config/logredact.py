"""Keep credentials that platforms put in URLs out of log lines.

httpx logs every request URL at INFO; WeCom, WeChat and DingTalk's legacy API take the
app secret and the access token in the query string, Telegram the bot token in the path.
"""

from __future__ import annotations

import logging
import re

_CREDENTIAL_IN_URL = re.compile(
    r"((?:corpsecret|secret|appsecret|access_token|corpid_secret)=)[^&\s\"']*", re.IGNORECASE
)


# Telegram puts the bot token in the path: https://api.telegram.org/bot<id>:<secret>/sendMessage
_BOT_TOKEN_IN_PATH = re.compile(r"(/bot)[0-9]+:[A-Za-z0-9_-]+")


def redact(text: str) -> str:
    return _BOT_TOKEN_IN_PATH.sub(r"\1***", _CREDENTIAL_IN_URL.sub(r"\1***", text))


class RedactCredentials(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True
