"""Per-task callback tokens: HMAC of the task id and a stored nonce, checked in constant time."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

CALLBACK_PREFIX = "/callbacks/evolink"


def new_nonce() -> str:
    """Random material stored with the task; the token itself is never stored."""
    return secrets.token_hex(16)


def callback_token(secret: bytes, task_id: str, nonce: str) -> str:
    """256 bits, URL-safe, 43 characters."""
    digest = hmac.new(secret, f"evolink-callback:{task_id}:{nonce}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()


def callback_url(base_url: str, secret: bytes, task_id: str, nonce: str) -> str:
    """The URL the provider posts this task's callbacks to."""
    return f"{base_url}{CALLBACK_PREFIX}/{task_id}/{callback_token(secret, task_id, nonce)}"


def token_matches(secret: bytes, task_id: str, nonce: str, presented: str) -> bool:
    """Constant-time comparison of a presented token with the expected one."""
    expected = callback_token(secret, task_id, nonce).encode()
    return hmac.compare_digest(expected, presented.encode("utf-8", "replace"))
