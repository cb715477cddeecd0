# Helpers that test modules import by name; the fixtures come from tests/fixtures.py.
from tests.fixtures import PASSWORD, fresh_code, sign_in, totp_code

__all__ = ["PASSWORD", "fresh_code", "sign_in", "totp_code"]
