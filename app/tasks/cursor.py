"""Opaque keyset cursors for task lists: (created_at, id) of the last task of a page."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime

from app.tasks.schemas import is_task_id


class CursorError(ValueError):
    """A cursor this service did not make."""


def encode_cursor(created_at: datetime, task_id: str) -> str:
    """An opaque cursor pointing just after this task."""
    raw = json.dumps([created_at.isoformat(), task_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The position a cursor points at."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created, task_id = json.loads(base64.urlsafe_b64decode(padded.encode()))
        moment = datetime.fromisoformat(created)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise CursorError("cursor is not valid") from exc
    if moment.tzinfo is None or not isinstance(task_id, str) or not is_task_id(task_id):
        raise CursorError("cursor is not valid")
    return moment, task_id
