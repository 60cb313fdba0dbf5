"""Structured logs: one JSON object a line, secrets scrubbed."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "color_message",  # uvicorn's copy of the message with terminal colours
}
# Anything that looks like a credential is masked even if it slips into a message.
_SECRET_PATTERNS = (
    re.compile(r"(?i)(bearer\s+)[^\s\"']+"),
    re.compile(r"sk-evo-[A-Za-z0-9_\-]+"),
    re.compile(r"whsec_[A-Za-z0-9+/=]+"),
    # A callback path's nonce and token (or the token alone, in the older form).
    re.compile(r"(/callbacks/evolink/[^/\s\"']+/)[^\s\"'?]+"),
    re.compile(r"(://[^/:@\s\"']+:)[^/@\s\"']+(?=@)"),  # the password of a URL
)
# The configured secrets themselves, whatever their shape (see register_secrets).
_known_secrets: list[str] = []


def register_secrets(*values: str | None) -> None:
    """Mask these exact values (API keys, provider key, secrets) wherever they appear."""
    for value in values:
        if not value or len(value) < 8:
            continue
        for form in (value, json.dumps(value, ensure_ascii=False)[1:-1]):  # as it shows in JSON
            if form not in _known_secrets:
                _known_secrets.append(form)
    _known_secrets.sort(key=len, reverse=True)  # a secret containing another goes first


def scrub(text: str) -> str:
    """Mask credentials and callback tokens in free text."""
    for secret in _known_secrets:
        text = text.replace(secret, "***")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + "***", text)
    return text


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line with its `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return scrub(json.dumps(entry, default=str, ensure_ascii=False))


def configure_logging(level: str = "INFO") -> None:
    """Send every log record to stderr as JSON."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
