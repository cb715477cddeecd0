"""The API client WeCom (企业微信) and WeChat Official Accounts (公众号) share: the same
scheme on qyapi.weixin.qq.com and api.weixin.qq.com. Every answer is HTTP 200 with JSON
carrying an integer `errcode` (0: done) and `errmsg`; the access token travels in the
query string; a dead token is errcode 40001, 40014 or 42001 on either.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from channels_app.errors import TransportError
from channels_app.platform_api import PlatformApi

# The token is dead (invalid, expired, or replaced); a fresh one fixes it.
TOKEN_ERRCODES = frozenset({40001, 40014, 42001})
# The system is busy (-1), or an API's quota for the day ran out (45009): the same call
# later succeeds. Each platform adds a limit of its own.
BUSY_ERRCODES = frozenset({-1, 45009})


class WeixinApi(PlatformApi):
    """The shared client; each platform's subclass declares its label and ErrorTable."""

    # A 408 is the gateway's timeout: the same request later may pass.
    transient_statuses: ClassVar[frozenset[int]] = frozenset({408, 429})

    def call(self, method: str, path: str, what: str, *, errcode_required: bool = True, **kwargs) -> dict:
        """One API call; the JSON answer, whatever its errcode, or TransportError."""
        response = self.request(method, path, what, **kwargs)
        self.raise_for_status(response, f"{self.label} {what} answered HTTP {response.status_code}")
        if response.status_code != 200:
            raise TransportError(
                f"{self.label} {what} answered HTTP {response.status_code}; check the bot's API base URL",
                permanent=True,
            )
        try:
            data = response.json()
        except ValueError as exc:
            raise TransportError(f"{self.label} {what} answered HTTP 200 with a body that is not JSON") from exc
        # Without an integer errcode we cannot tell a delivered message from a proxy's
        # error page, so it is not taken as success (and may pass when tried again).
        if not isinstance(data, dict):
            raise TransportError(f"{self.label} {what} answered with JSON that is not an object")
        if "errcode" not in data and errcode_required:
            raise TransportError(f"{self.label} {what} answered without an errcode")
        errcode = data.setdefault("errcode", 0)
        if not isinstance(errcode, int) or isinstance(errcode, bool):
            raise TransportError(f"{self.label} {what} answered with an errcode that is not a number")
        return data

    def refusal(self, what: str, data: dict) -> TransportError:
        errcode = data.get("errcode")
        detail = f"{self.label} {what} refused: errcode {errcode} {str(data.get('errmsg', ''))[:300]}"
        return self.errors.refusal(detail, errcode)

    def checked(self, what: str, data: dict) -> dict:
        """`data` if its errcode is 0; the refusal it stands for otherwise."""
        if data["errcode"] != 0:
            raise self.refusal(what, data)
        return data

    def token_from(self, what: str, data: dict) -> tuple[str, int]:
        """(access_token, expires_in) of a token endpoint's answer."""
        self.checked(what, data)
        token, expires_in = data.get("access_token"), data.get("expires_in")
        if not isinstance(token, str) or not token or not isinstance(expires_in, int):
            raise TransportError(f"{self.label} {what} answered without access_token / expires_in")
        return token, expires_in

    def post_with_token(
        self, token_name: str, fetch: Callable[[], tuple[str, int]], path: str, what: str, payload: dict
    ) -> dict:
        """POST payload to path with the access token (refreshed once if it died); the
        answer of errcode 0, TransportError otherwise."""
        data = self.send_with_token(
            token_name,
            fetch,
            lambda token: self.call("POST", path, what, params={"access_token": token}, json=payload),
            lambda data: f"errcode {data['errcode']}" if data["errcode"] in self.errors.token_dead else None,
        )
        return self.checked(what, data)
