"""Input tokens: one reference of one task until its expiry; any change, another key, a later
expiry or another position is refused from the name alone."""

from __future__ import annotations

import base64
import struct
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from app.core.callback_tokens import callback_token
from app.core.input_tokens import (
    INPUT_URL_LIFETIME,
    MAC_BYTES,
    TOKEN_CHARS,
    InputToken,
    Refusal,
    input_expiry,
    input_key,
    input_path,
    input_token,
    input_url,
    read_name,
)

SECRET = b"test-callback-secret-0123456789abcdefghij"
KEY = input_key(SECRET)
TASK = "0b6f3c2e-8a41-4f55-9d3e-2f1a7c9e4b10"
CREATED = datetime(2026, 12, 7, 10, 0, 0, tzinfo=UTC)
EXPIRES = input_expiry(CREATED)
NOW = CREATED + timedelta(minutes=5)
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def token(position: int = 3, expires_at: datetime = EXPIRES, key: bytes = KEY) -> str:
    return input_token(key, TASK, position, expires_at)


def test_a_name_reads_back_as_its_task_position_and_extension() -> None:
    name = f"{token()}.png"

    read = read_name(KEY, name, now=NOW)

    assert read == InputToken(TASK, 3, int(EXPIRES.timestamp()), "png")


def test_the_token_is_52_url_safe_characters_without_padding() -> None:
    value = token()

    assert len(value) == TOKEN_CHARS == 52
    assert set(value) <= set(ALPHABET)
    assert len(base64.urlsafe_b64decode(value)) == 21 + MAC_BYTES


def test_the_url_is_the_base_url_inputs_token_and_extension() -> None:
    url = input_url("https://gw.example.com", KEY, TASK, 0, EXPIRES, "webp")

    assert url == f"https://gw.example.com/inputs/{token(0)}.webp"
    assert input_path(KEY, TASK, 0, EXPIRES, "webp") == url.removeprefix("https://gw.example.com")
    assert len(url) < 100


def test_the_same_reference_always_gets_the_same_token() -> None:
    # Every retry of a submission sends the same URL: the expiry comes from the creation time.
    assert token() == token()
    assert input_expiry(CREATED) == CREATED + INPUT_URL_LIFETIME == CREATED + timedelta(hours=24)


@pytest.mark.parametrize("index", range(TOKEN_CHARS))
def test_changing_any_character_is_refused(index: int) -> None:
    value = token()
    replacement = ALPHABET[(ALPHABET.index(value[index]) + 1) % len(ALPHABET)]
    tampered = value[:index] + replacement + value[index + 1 :]

    assert read_name(KEY, f"{tampered}.png", now=NOW) is Refusal.BAD_TOKEN


def test_a_later_expiry_with_the_old_mac_is_refused() -> None:
    raw = base64.urlsafe_b64decode(token())
    task_bytes, position, expires_at = struct.unpack(">16sBI", raw[:21])
    extended = struct.pack(">16sBI", task_bytes, position, expires_at + 86400) + raw[21:]
    name = base64.urlsafe_b64encode(extended).decode() + ".png"

    assert read_name(KEY, name, now=NOW) is Refusal.BAD_TOKEN


def test_another_position_with_the_old_mac_is_refused() -> None:
    raw = base64.urlsafe_b64decode(token(position=3))
    moved = raw[:16] + bytes([4]) + raw[17:]
    name = base64.urlsafe_b64encode(moved).decode() + ".png"

    assert read_name(KEY, name, now=NOW) is Refusal.BAD_TOKEN


def test_another_task_with_the_old_mac_is_refused() -> None:
    raw = base64.urlsafe_b64decode(token())
    other = uuid.uuid4().bytes + raw[16:]
    name = base64.urlsafe_b64encode(other).decode() + ".png"

    assert read_name(KEY, name, now=NOW) is Refusal.BAD_TOKEN


def test_a_token_made_with_another_key_is_refused() -> None:
    other = input_key(b"another-callback-secret-0123456789abcdefgh")

    assert read_name(KEY, f"{token(key=other)}.png", now=NOW) is Refusal.BAD_TOKEN
    assert read_name(other, f"{token()}.png", now=NOW) is Refusal.BAD_TOKEN


def test_the_key_is_derived_for_inputs_alone() -> None:
    # A token made with the callback secret itself (as callback tokens are) is not one.
    assert KEY != SECRET
    assert len(KEY) == 32
    assert read_name(KEY, f"{token(key=SECRET)}.png", now=NOW) is Refusal.BAD_TOKEN
    assert callback_token(SECRET, TASK, "0" * 32) not in token()


def test_a_token_is_refused_from_its_expiry_on() -> None:
    name = f"{token()}.jpg"

    assert isinstance(read_name(KEY, name, now=EXPIRES - timedelta(seconds=1)), InputToken)
    assert read_name(KEY, name, now=EXPIRES) is Refusal.EXPIRED
    assert read_name(KEY, name, now=EXPIRES + timedelta(days=400)) is Refusal.EXPIRED


def test_an_expired_token_that_is_also_forged_is_refused_as_forged() -> None:
    value = token(expires_at=CREATED)
    forged = ("A" if value[0] != "A" else "B") + value[1:]

    assert read_name(KEY, f"{forged}.png", now=NOW) is Refusal.BAD_TOKEN


@pytest.mark.parametrize(
    "name",
    [
        "",
        "x.png",
        "{t}",
        "{t}.",
        "{t}.gif",
        "{t}.PNG",
        "{t}.jpeg",
        "{t}.png.png",
        "{t}.png/",
        "{t}=.png",
        "{t}A.png",
        "{short}.png",
        "{t}.png\x00",
        "../{t}.png",
        "{t}/../x.png",
        "{dotted}.png",
        "{plus}.png",
    ],
)
def test_names_of_another_shape_are_refused(name: str) -> None:
    value = token()
    shaped = name.format(t=value, short=value[:-1], dotted=value[:-1] + ".", plus=value[:-1] + "+")

    assert read_name(KEY, shaped, now=NOW) is Refusal.BAD_NAME


def test_the_extension_is_not_signed_and_is_checked_by_the_endpoint() -> None:
    read = read_name(KEY, f"{token()}.jpg", now=NOW)

    assert isinstance(read, InputToken)
    assert read.extension == "jpg"


@pytest.mark.parametrize("position", [-1, 256])
def test_positions_outside_a_byte_are_refused(position: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        input_token(KEY, TASK, position, EXPIRES)
