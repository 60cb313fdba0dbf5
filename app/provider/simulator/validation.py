"""Validation of create requests, with the provider's rules and error params."""

from __future__ import annotations

import ipaddress
import json
import math
import re
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from app.core.urls import MAX_CALLBACK_URL_LENGTH, is_forbidden_address, is_under
from app.provider.types import MAX_IMAGE_URLS, MODEL, QUALITIES, SIZES

from .errors import invalid_request

MAX_PROMPT_TOKENS = 2000
DEFAULT_SIZE = "1024x1024"
DEFAULT_QUALITY = "high"

# ASCII words, digit groups of up to 3 and every other visible character (punctuation, CJK,
# emoji) count as one token each, like a BPE tokenizer roughly does; long unbroken runs are
# caught by the second estimate, 4 non-space characters per token.
_TOKEN_RE = re.compile(r"[A-Za-z]+|\d{1,3}|[^\sA-Za-z\d]")
_SPACE_RE = re.compile(r"\s+")
_IPV4_LEGACY_RE = re.compile(r"[0-9a-fA-FxX.]+")


@dataclass(frozen=True, slots=True)
class CreateParams:
    """A valid create request with the defaults filled in."""

    prompt: str
    size: str
    quality: str
    image_urls: tuple[str, ...]
    callback_url: str | None


def count_tokens(text: str) -> int:
    """Approximate tokens: the larger of a word/punctuation count and non-space chars / 4."""
    pieces = sum(1 for _ in _TOKEN_RE.finditer(text))
    return max(pieces, math.ceil(len(_SPACE_RE.sub("", text)) / 4))


def parse_create(
    raw: bytes, *, allow_private_callbacks: bool, callback_base_url: str | None = None
) -> tuple[dict[str, Any], CreateParams]:
    """Decode and check a create body; raises ApiError 400 naming the first bad field.
    `callback_base_url`: when set, the only place a callback_url may point below."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise invalid_request("Request body must be valid JSON") from None
    if not isinstance(body, dict):
        raise invalid_request("Request body must be a JSON object")
    if body.get("model") != MODEL:
        raise invalid_request(f"model must be '{MODEL}'", "model")
    params = CreateParams(
        prompt=_prompt(body.get("prompt")),
        size=_choice(body.get("size"), "size", SIZES, DEFAULT_SIZE),
        quality=_choice(body.get("quality"), "quality", QUALITIES, DEFAULT_QUALITY),
        image_urls=_image_urls(body.get("image_urls")),
        callback_url=_callback_url(
            body.get("callback_url"), allow_private_callbacks, callback_base_url
        ),
    )
    _n(body.get("n"))
    return body, params


def _prompt(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise invalid_request("prompt is required and must be a non-empty string", "prompt")
    tokens = count_tokens(value)
    if tokens > MAX_PROMPT_TOKENS:
        raise invalid_request(
            f"prompt is too long: about {tokens} tokens, at most {MAX_PROMPT_TOKENS}", "prompt"
        )
    return value


def _choice(value: object, param: str, allowed: tuple[str, ...], default: str) -> str:
    if value is None:
        return default
    if not isinstance(value, str) or value not in allowed:
        raise invalid_request(f"{param} must be one of: {', '.join(allowed)}", param)
    return value


def _image_urls(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_IMAGE_URLS:
        raise invalid_request(
            f"image_urls must be a list of 1 to {MAX_IMAGE_URLS} URLs", "image_urls"
        )
    if not all(isinstance(url, str) and is_http_url(url) for url in value):
        raise invalid_request("image_urls must hold http(s) URLs", "image_urls")
    return tuple(value)


def is_http_url(url: str) -> bool:
    """Whether `url` is an absolute http(s) URL with a host."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.netloc)


def _n(value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or value != 1:
        raise invalid_request("n must be 1: only one image per task is supported", "n")


def _callback_url(value: object, allow_private: bool, only_under: str | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise invalid_request("callback_url must be a URL", "callback_url")
    if len(value) > MAX_CALLBACK_URL_LENGTH:
        raise invalid_request(
            f"callback_url must be at most {MAX_CALLBACK_URL_LENGTH} characters", "callback_url"
        )
    try:
        parts = urlsplit(value)
        host = parts.hostname
        _ = parts.port
    except ValueError:
        raise invalid_request("callback_url is not a valid URL", "callback_url") from None
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme.lower() not in schemes:
        raise invalid_request("callback_url must use HTTPS", "callback_url")
    if not host:
        raise invalid_request("callback_url must name a host", "callback_url")
    if not allow_private and is_internal_host(host):
        raise invalid_request("callback_url must not point to an internal address", "callback_url")
    if only_under is not None and not is_under(value, only_under):
        raise invalid_request(
            "callback_url must point to the service this simulator is built into", "callback_url"
        )
    return value


def is_internal_host(host: str) -> bool:
    """Whether a URL host is loopback, private, link-local or otherwise not public."""
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    address = _parse_ip(host)
    return address is not None and is_forbidden_address(address)


def _parse_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An IP literal, including legacy IPv4 spellings like `127.1` or `0x7f000001`."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _IPV4_LEGACY_RE.fullmatch(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None
