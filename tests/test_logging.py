"""The JSON log formatter masks configured secrets and credential shapes."""

from __future__ import annotations

import json
import logging

from app.core.logging import JsonFormatter, register_secrets


def formatted(message: str, **extra: object) -> str:
    record = logging.LogRecord("app.test", logging.INFO, __file__, 1, message, None, None)
    record.__dict__.update(extra)
    return JsonFormatter().format(record)


def test_configured_secrets_are_masked_whatever_their_shape() -> None:
    register_secrets("plain-shaped-key-8a7b6c5d", 'quote"d-secret-value', None, "short")

    line = formatted("key plain-shaped-key-8a7b6c5d", detail='with quote"d-secret-value')

    assert "plain-shaped-key-8a7b6c5d" not in line
    assert "quote" not in line
    assert json.loads(line)["message"] == "key ***"
    assert json.loads(formatted("short"))["message"] == "short"  # too short to be a secret


def test_credential_shapes_and_callback_tokens_are_masked() -> None:
    line = formatted(
        "calling",
        url="postgresql+asyncpg://gateway:pa55word@db:5432/imagegen",
        header="Bearer abcdefghijklmnop",
        path="/callbacks/evolink/9b1c/TOKENVALUE123",
        signed="POST /callbacks/evolink/9b1c/0a1b2c3d/SIGNEDTOKEN456 HTTP/1.1",
        key="sk-evo-abcdef123",
        notify="whsec_c2VjcmV0c2VjcmV0",
    )

    for leaked in ("pa55word", "abcdefghijklmnop", "TOKENVALUE123", "SIGNEDTOKEN456", "sk-evo-abc"):
        assert leaked not in line
    entry = json.loads(line)
    assert entry["url"] == "postgresql+asyncpg://gateway:***@db:5432/imagegen"
    assert "c2VjcmV0" not in line
    assert entry["path"] == "/callbacks/evolink/9b1c/***"
    assert entry["signed"] == "POST /callbacks/evolink/9b1c/*** HTTP/1.1"
