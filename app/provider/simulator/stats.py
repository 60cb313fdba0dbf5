"""Counters and records the simulator exposes at `/_sim/stats`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .files import UploadedFile
    from .references import ReferenceFetch


@dataclass
class SimulatorStats:
    """What happened since the simulator was built."""

    creates_accepted: int = 0
    creates_rejected_429: int = 0
    creates_rejected_500: int = 0
    creates_rejected_503: int = 0
    creates_invalid: int = 0
    creates_hung: int = 0
    creates_rejected_402: int = 0  # the balance could not cover the task (insufficient_quota)
    unauthorized: int = 0
    queries: int = 0
    queries_rejected_500: int = 0
    queries_rejected_503: int = 0
    credits_queries: int = 0  # GET /v1/credits answered 200
    credits_rejected_503: int = 0
    files_served: int = 0
    files_expired: int = 0
    callbacks_sent: int = 0
    callbacks_ok: int = 0
    callbacks_failed: int = 0
    callbacks_delivered: int = 0
    callbacks_given_up: int = 0
    callbacks_dropped: int = 0
    callbacks_stale: int = 0
    references_fetched: int = 0  # reference downloads that gave a usable image
    references_failed: int = 0
    uploads_accepted: int = 0
    uploads_unauthorized: int = 0
    uploads_rejected_429: int = 0
    uploads_rejected_503: int = 0
    uploads_rejected_quota: int = 0
    uploads_invalid: int = 0  # 400, 413 and 415 answers
    uploads_served: int = 0  # answers from `file_url` and `download_url`
    uploads_expired: int = 0  # requests for a file past its lifetime
    # Every reference download (task id, URL, status or error, bytes, sha256, sniffed type) and
    # every stored upload (with its sha256), in order: proof of the exact bytes received.
    reference_fetches: list[ReferenceFetch] = field(default_factory=list)
    uploaded_files: list[UploadedFile] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """All counters, plus `creates_rejected_fault` (429 + 500 + 503 answers to creates)."""
        counts: dict[str, Any] = dataclasses.asdict(self)
        counts["creates_rejected_fault"] = (
            self.creates_rejected_429 + self.creates_rejected_500 + self.creates_rejected_503
        )
        return counts
