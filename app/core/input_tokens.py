"""Signed, expiring names of the reference images this service serves to the provider.

A reference image of delivery `signed-url` is sent upstream as
`IMAGEGEN_PUBLIC_BASE_URL/inputs/<token>.<ext>`. The token is the unpadded base64url of

    task id (its UUID's 16 bytes) | position (1 byte) | expiry (unix seconds, 4 bytes, big-endian)
    | the first 18 bytes (144 bits) of HMAC-SHA256(key, those 21 bytes)

39 bytes, 52 characters with no padding bits (so no two strings decode to the same token). The
key is derived from the callback secret for this purpose alone (HMAC-SHA256 of the secret and
`imagegen-gateway/inputs/v1`), so that no token of another kind can stand for one of these. The
name is checked from itself alone, without I/O: an altered byte, a later expiry, another key or
another length is refused before the database is read. The extension is not signed: the endpoint
checks it against the reference's content type."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import struct
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Final

INPUTS_PREFIX: Final = "/inputs/"
# A token is valid until its task's creation time plus this: every retry of the submission sends
# the same URL, and the provider downloads the references when it starts the task.
INPUT_URL_LIFETIME: Final = timedelta(hours=24)
EXTENSIONS: Final = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
CONTENT_TYPES: Final = {extension: kind for kind, extension in EXTENSIONS.items()}
MAC_BYTES: Final = 18
TOKEN_CHARS: Final = 52
_PAYLOAD: Final = struct.Struct(">16sBI")
_KEY_LABEL: Final = b"imagegen-gateway/inputs/v1"
_NAME: Final = re.compile(r"([A-Za-z0-9_-]{52})\.(png|jpg|webp)")
_MAX_EXPIRY: Final = 2**32 - 1


class Refusal(StrEnum):
    """Why a name under /inputs/ is not served (counted, never told)."""

    BAD_NAME = "bad_name"  # not <52 base64url characters>.<png|jpg|webp>
    BAD_METHOD = "bad_method"  # neither GET nor HEAD
    BAD_TOKEN = "bad_token"  # noqa: S105 - the MAC does not match
    EXPIRED = "expired"
    NOT_SERVABLE = "not_servable"  # no such task or reference, terminal task, wrong extension…


@dataclass(frozen=True, slots=True)
class InputToken:
    """What an authentic name says: a task's reference at `position`, and its extension."""

    task_id: str
    position: int
    expires_at: int  # unix seconds
    extension: str


def input_key(secret: bytes) -> bytes:
    """The key of input tokens, derived from the callback secret."""
    return hmac.new(secret, _KEY_LABEL, hashlib.sha256).digest()


def input_expiry(created_at: datetime) -> datetime:
    """When the URLs of a task's references stop working (the same on every submission)."""
    return created_at + INPUT_URL_LIFETIME


def extension_of(content_type: str) -> str | None:
    """The file extension of an image type the service serves, None for any other type."""
    return EXTENSIONS.get(content_type)


def input_token(key: bytes, task_id: str, position: int, expires_at: datetime) -> str:
    """The 52-character token of one reference of one task."""
    seconds = int(expires_at.timestamp())
    if not 0 <= position <= 255 or not 0 < seconds <= _MAX_EXPIRY:
        raise ValueError("position or expiry out of range")
    payload = _PAYLOAD.pack(uuid.UUID(task_id).bytes, position, seconds)
    return base64.urlsafe_b64encode(payload + _mac(key, payload)).decode()


def input_path(key: bytes, task_id: str, position: int, expires_at: datetime, ext: str) -> str:
    """`/inputs/<token>.<ext>`."""
    return f"{INPUTS_PREFIX}{input_token(key, task_id, position, expires_at)}.{ext}"


def input_url(
    base_url: str, key: bytes, task_id: str, position: int, expires_at: datetime, ext: str
) -> str:
    """The URL the provider downloads one reference from."""
    return base_url + input_path(key, task_id, position, expires_at, ext)


def read_name(key: bytes, name: str, *, now: datetime) -> InputToken | Refusal:
    """The reference an `/inputs/` name stands for, or why it is refused; no I/O."""
    match = _NAME.fullmatch(name)
    if match is None:
        return Refusal.BAD_NAME
    token, extension = match.groups()
    try:
        raw = base64.urlsafe_b64decode(token)
    except (binascii.Error, ValueError):  # pragma: no cover - the pattern admits valid ones only
        return Refusal.BAD_NAME
    payload, mac = raw[: _PAYLOAD.size], raw[_PAYLOAD.size :]
    if not hmac.compare_digest(mac, _mac(key, payload)):
        return Refusal.BAD_TOKEN
    task_bytes, position, expires_at = _PAYLOAD.unpack(payload)
    if expires_at <= now.astimezone(UTC).timestamp():
        return Refusal.EXPIRED
    return InputToken(str(uuid.UUID(bytes=task_bytes)), position, expires_at, extension)


def _mac(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, payload, hashlib.sha256).digest()[:MAC_BYTES]
