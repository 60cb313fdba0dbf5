"""Settings and fault switches of the EvoLink simulator."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .billing import DEFAULT_CREDITS

if TYPE_CHECKING:
    from collections.abc import Mapping

IMAGE_FORMATS = ("png", "jpeg", "webp")
RATE_FIELDS = (
    "callback_drop_rate",
    "create_429_rate",
    "create_500_rate",
    "create_hang_rate",
    "query_500_rate",
    "fail_rate",
    "files_429_rate",
    "files_error_rate",
)
MAX_IMAGE_BYTES = 50 * 1024 * 1024  # the provider's bound on a reference image and an upload
FILES_TTL_SECONDS = 72 * 3600.0


@dataclass
class SimulatorFaults:
    """Faults the simulator injects; every `*_rate` is a fraction in [0, 1]."""

    callback_drop_rate: float = 0.0
    callback_duplicates: int = 1
    stale_after_final: bool = False
    create_429_rate: float = 0.0
    create_500_rate: float = 0.0
    create_hang_rate: float = 0.0
    create_hang_seconds: float = 120.0
    query_500_rate: float = 0.0
    fail_rate: float = 0.0
    link_ttl_seconds: float = 86400.0
    file_bytes_per_second: float = 0.0  # throttle result downloads (0: as fast as possible)
    down: bool = False  # the task API only: the Files API has the two rates below
    files_429_rate: float = 0.0
    files_error_rate: float = 0.0  # Files API uploads answered 503

    def __post_init__(self) -> None:
        for name in RATE_FIELDS:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value!r}")
        if self.callback_duplicates < 1:
            raise ValueError("callback_duplicates must be at least 1")
        if not self.create_hang_seconds >= 0.0:
            raise ValueError("create_hang_seconds must not be negative")
        if not self.link_ttl_seconds >= 0.0:
            raise ValueError("link_ttl_seconds must not be negative")
        if not self.file_bytes_per_second >= 0.0:
            raise ValueError("file_bytes_per_second must not be negative")

    def to_json(self) -> dict[str, Any]:
        """The faults as a JSON object."""
        return dataclasses.asdict(self)

    def updated(self, changes: Mapping[str, object]) -> SimulatorFaults:
        """A copy with `changes` (JSON values) applied; ValueError names any bad field."""
        values = dataclasses.asdict(self)
        for name, value in changes.items():
            if name not in values:
                raise ValueError(f"unknown fault field: {name}")
            values[name] = _coerce(name, value, type(values[name]))
        return SimulatorFaults(**values)


def _coerce(name: str, value: object, expected: type) -> object:
    """Check one JSON value against the type of the field's default."""
    if expected is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{name} must be a boolean")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number")
    if expected is int:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{name} must be an integer")
        return int(value)
    return float(value)


@dataclass
class SimulatorConfig:
    """Everything a simulator instance needs; faults can change at runtime."""

    api_keys: tuple[str, ...] = ("sk-evo-simulator",)
    duration_seconds: float = 3.0
    allow_private_callbacks: bool = False
    # Built into a gateway (IMAGEGEN_PROVIDER=simulator): its base URL, the only place callbacks
    # may go (checked at create and again before sending). None: anywhere the rules above allow.
    callback_base_url: str | None = None
    image_format: str = "png"
    image_noise: float = 0.0  # fraction of each image's rows that are incompressible noise
    # Render every result at this width and height instead of the task's size (benchmarks that
    # measure the gateway's own work rather than the bytes of 1024x1024 images). None: the size.
    image_pixels: tuple[int, int] | None = None
    seed: int | None = None
    # Download every `image_urls` entry when a task starts, as the provider does; off only as a
    # development shortcut (the task then never looks at its references).
    fetch_references: bool = True
    reference_timeout_seconds: float = 10.0  # per reference download, and per URL upload
    max_image_bytes: int = MAX_IMAGE_BYTES  # per reference and per uploaded file
    files_ttl_seconds: float = FILES_TTL_SECONDS  # lifetime of an uploaded file
    files_quota: int | None = None  # files that may be stored (unexpired) at once; None: no limit
    credits: float = DEFAULT_CREDITS  # the account's starting balance (billing.py)
    unlimited_credits: bool = False  # the key has no limit: creates are never refused for credits
    faults: SimulatorFaults = field(default_factory=SimulatorFaults)

    def __post_init__(self) -> None:
        self.api_keys = tuple(self.api_keys)
        if not self.api_keys or not all(self.api_keys):
            raise ValueError("api_keys must hold at least one non-empty key")
        if not self.duration_seconds >= 0.0:
            raise ValueError("duration_seconds must not be negative")
        if not 0.0 <= self.image_noise <= 1.0:
            raise ValueError("image_noise must be between 0 and 1")
        self.image_noise = float(self.image_noise)
        if self.image_pixels is not None:
            width, height = self.image_pixels
            if not (1 <= width <= 4096 and 1 <= height <= 4096):
                raise ValueError("image_pixels must be between 1x1 and 4096x4096")
            self.image_pixels = (int(width), int(height))
        if self.image_format not in IMAGE_FORMATS:
            raise ValueError(f"image_format must be one of {', '.join(IMAGE_FORMATS)}")
        if not self.reference_timeout_seconds > 0.0:
            raise ValueError("reference_timeout_seconds must be positive")
        if self.max_image_bytes < 1:
            raise ValueError("max_image_bytes must be at least 1")
        if not self.files_ttl_seconds >= 0.0:
            raise ValueError("files_ttl_seconds must not be negative")
        if self.files_quota is not None and self.files_quota < 0:
            raise ValueError("files_quota must not be negative")
        if not 0.0 <= self.credits < math.inf:
            raise ValueError("credits must be a finite number, not negative")
