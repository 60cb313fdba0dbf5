"""What the Files API holds: uploads on disk with their metadata, lifetime and quota."""

from __future__ import annotations

import secrets
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import errors
from .sniffing import UPLOAD_TYPES, Tally

if TYPE_CHECKING:
    from collections.abc import Callable

    from .config import SimulatorConfig
    from .stats import SimulatorStats

FILE_URL_PREFIX = "/files-api"
DOWNLOAD_PREFIX = "/api/v1/files/download"


@dataclass(frozen=True, slots=True)
class UploadedFile:
    """One accepted upload as the API describes it, with the sha256 of its exact bytes."""

    file_id: str
    file_name: str
    original_name: str
    file_size: int
    mime_type: str
    upload_path: str
    sha256: str
    source: str  # how it came: "stream", "base64" or "url"
    source_url: str | None  # the `file_url` a URL upload fetched
    upload_time: str  # RFC 3339 with offset
    expires_at: str

    @property
    def file_path(self) -> str:
        """Where `file_url` points below the base URL; it ends with the image's extension."""
        return f"{FILE_URL_PREFIX}/{self.upload_path}/{self.file_id}.{UPLOAD_TYPES[self.mime_type]}"

    def data(self, base: str) -> dict[str, Any]:
        """The `data` object of the upload answer, with links below `base`."""
        return {
            "file_id": self.file_id,
            "file_name": self.file_name,
            "original_name": self.original_name,
            "file_size": self.file_size,
            "mime_type": self.mime_type,
            "upload_path": self.upload_path,
            "file_url": f"{base}{self.file_path}",
            "download_url": f"{base}{DOWNLOAD_PREFIX}/{self.file_id}",
            "upload_time": self.upload_time,
            "expires_at": self.expires_at,
        }


@dataclass(frozen=True, slots=True)
class StoredFile:
    """An upload and where its bytes are, until the monotonic time `expires`."""

    record: UploadedFile
    path: Path
    expires: float


class Spool:
    """An upload's bytes written in chunks to a file, counted and hashed, capped at `limit`."""

    def __init__(self, path: Path, limit: int) -> None:
        self.path = path
        self.limit = limit
        self.tally = Tally()
        self._file = path.open("wb")

    def write(self, chunk: bytes) -> None:
        """Append `chunk`; 413 once the file passes the limit."""
        if self.tally.size + len(chunk) > self.limit:
            raise errors.files_too_large(self.limit)
        self.tally.add(chunk)
        self._file.write(chunk)

    def close(self) -> None:
        """Flush and close the file, keeping it."""
        self._file.close()

    def discard(self) -> None:
        """Close and delete the file."""
        self._file.close()
        self.path.unlink(missing_ok=True)


class FileStore:
    """Uploaded files by id in a temporary directory, removed by `close`.

    A file lives `files_ttl_seconds` on the engine's clock; `files_quota` bounds how many live
    at once (expired ones no longer count)."""

    def __init__(
        self, config: SimulatorConfig, stats: SimulatorStats, now: Callable[[], float]
    ) -> None:
        self._config = config
        self._stats = stats
        self._now = now
        self._directory: Path | None = None
        self._files: dict[str, StoredFile] = {}
        self._expired: set[str] = set()

    @property
    def directory(self) -> Path | None:
        """Where the bytes are, once the first upload came (until `close`)."""
        return self._directory

    def spool(self) -> Spool:
        """A new file to receive an upload, capped at `max_image_bytes`."""
        if self._directory is None:
            self._directory = Path(tempfile.mkdtemp(prefix="evolink-sim-files-"))
        path = self._directory / f"spool-{secrets.token_hex(8)}"
        return Spool(path, self._config.max_image_bytes)

    def add(
        self,
        spool: Spool,
        *,
        mime_type: str,
        original_name: str,
        file_name: str | None,
        upload_path: str,
        source: str,
        source_url: str | None = None,
    ) -> UploadedFile:
        """Keep a complete spool as a new file; 402 (the spool discarded) when the quota is used."""
        self._sweep()
        quota = self._config.files_quota
        if quota is not None and len(self._files) >= quota:
            spool.discard()
            self._stats.uploads_rejected_quota += 1
            raise errors.files_quota_exhausted(quota)
        spool.close()
        file_id = f"file_{secrets.token_hex(12)}"
        uploaded = datetime.now(UTC).replace(microsecond=0)
        ttl = self._config.files_ttl_seconds
        record = UploadedFile(
            file_id=file_id,
            file_name=file_name or original_name or f"{file_id}.{UPLOAD_TYPES[mime_type]}",
            original_name=original_name or file_name or f"{file_id}.{UPLOAD_TYPES[mime_type]}",
            file_size=spool.tally.size,
            mime_type=mime_type,
            upload_path=upload_path,
            sha256=spool.tally.sha256,
            source=source,
            source_url=source_url,
            upload_time=uploaded.isoformat(),
            expires_at=(uploaded + timedelta(seconds=ttl)).isoformat(),
        )
        path = spool.path.with_name(file_id)
        spool.path.rename(path)
        self._files[file_id] = StoredFile(record, path, self._now() + ttl)
        self._stats.uploads_accepted += 1
        self._stats.uploaded_files.append(record)
        return record

    def find(self, file_id: str) -> StoredFile:
        """The live file `file_id`; 404 when unknown or expired (its bytes then deleted)."""
        stored = self._files.get(file_id)
        if stored is not None and self._now() >= stored.expires:
            self._forget(stored)
        if file_id in self._expired:
            self._stats.uploads_expired += 1
            raise errors.files_not_found("File has expired")
        if stored is None:
            raise errors.files_not_found()
        return stored

    def close(self) -> None:
        """Delete every file and the directory."""
        self._files.clear()
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None

    def _sweep(self) -> None:
        """Delete the files whose lifetime is over."""
        now = self._now()
        for stored in [s for s in self._files.values() if now >= s.expires]:
            self._forget(stored)

    def _forget(self, stored: StoredFile) -> None:
        del self._files[stored.record.file_id]
        self._expired.add(stored.record.file_id)
        stored.path.unlink(missing_ok=True)
