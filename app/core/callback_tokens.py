"""Per-task callback tokens: HMAC of the task id and its nonce, checked in constant time.

A callback URL carries the task id, the nonce and the token, so that the token is checked from
the path alone, without reading the task (`{CALLBACK_PREFIX}/{task id}/{nonce}/{token}`). URLs
given out before the nonce was in the path (`{CALLBACK_PREFIX}/{task id}/{token}`) still work:
their nonce is read from the task."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

CALLBACK_PREFIX = "/callbacks/evolink"
NONCE_CHARS = 32
TOKEN_CHARS = 43
_NONCE = re.compile(r"[0-9a-f]{32}")


def new_nonce() -> str:
    """Random material stored with the task; the token itself is never stored."""
    return secrets.token_hex(NONCE_CHARS // 2)


def is_nonce(value: str) -> bool:
    """Whether `value` has the shape of a nonce this service makes."""
    return _NONCE.fullmatch(value) is not None


def callback_token(secret: bytes, task_id: str, nonce: str) -> str:
    """256 bits, URL-safe, 43 characters."""
    digest = hmac.new(secret, f"evolink-callback:{task_id}:{nonce}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()


def callback_path(secret: bytes, task_id: str, nonce: str) -> str:
    """The path of this task's callback URL."""
    return f"{CALLBACK_PREFIX}/{task_id}/{nonce}/{callback_token(secret, task_id, nonce)}"


def callback_url(base_url: str, secret: bytes, task_id: str, nonce: str) -> str:
    """The URL the provider posts this task's callbacks to."""
    return base_url + callback_path(secret, task_id, nonce)


def token_matches(secret: bytes, task_id: str, nonce: str, presented: str) -> bool:
    """Constant-time comparison of a presented token with the expected one."""
    expected = callback_token(secret, task_id, nonce).encode()
    return hmac.compare_digest(expected, presented.encode("utf-8", "replace"))
