"""What a soak run is given: its settings, and the names, keys and patterns of its stack."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SERVER = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
API_KEY = "soak-key-0123456789abcdef"
SIMULATOR_KEY = "sk-evo-simulator"
CALLBACK_SECRET = "soak-callback-secret-0123456789abcdefghij"
NOTIFY_SECRET = "whsec_c29hay10ZXN0LW5vdGlmeS1zZWNyZXQtMDEyMzQ1Njc4OQ=="
BUCKET = "imagegen-soak"
PREFIX = "soak"
AWS = {
    "AWS_ACCESS_KEY_ID": "soak-key-id",
    "AWS_SECRET_ACCESS_KEY": "soak-secret-key",
    "AWS_REGION": "us-east-1",
    "AWS_ALLOW_HTTP": "true",
}
TERMINAL = ("succeeded", "failed", "cancelled")
EVENT_TYPES = {status: f"task.{status}" for status in TERMINAL}
CALLBACK_TASK = re.compile(r"/callbacks/evolink/([0-9a-f-]{36})/")
OBJECT_KEY = re.compile(rf"^{PREFIX}/tasks/([0-9a-f-]{{36}})/images/(\d+)(\.thumb\.webp)?$")
NOTIFY_AVAILABLE = importlib.util.find_spec("app.notify.notifying") is not None


@dataclass
class SoakConfig:
    """What to run; the defaults are the full soak."""

    tasks: int = 2000
    rate: float = 10.0  # submissions per second
    server_url: str | None = None  # admin URL of the PostgreSQL server
    task_seconds: float = 1.0  # how long the simulator takes per task
    poll_after_seconds: float = 2.0
    lease_seconds: float = 5.0
    # A create whose answer was lost waits this long for a callback, then fails the task
    # (provider_timeout): short, so that such tasks end within the run and are counted.
    uncertain_wait_seconds: float = 60.0
    s3_outage_seconds: float = 10.0
    drain_timeout: float = 600.0  # bound on the wait for every task to be terminal
    callback_drop_rate: float = 0.3
    callback_duplicates: int = 3
    create_429_rate: float = 0.05
    # How long every replica holds its creates after a 429 without Retry-After. The service's
    # default is the provider's minute; the soak's 429s are random faults, not a rate limit,
    # and a minute after each one (the held backlog then draws the next 429 when it lifts)
    # would leave tasks unsubmitted at the end of a bounded run.
    rate_limit_wait_seconds: float = 2.0
    query_500_rate: float = 0.05
    fail_rate: float = 0.05
    notify_fail_rate: float = 0.1  # share of first notification deliveries answered 503
    seed: int | None = None
    workdir: Path | None = None
    keep_database: bool = False
    progress: Callable[[str], None] | None = None
