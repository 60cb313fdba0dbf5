"""All configuration in one typed settings class, read from IMAGEGEN_* variables and `.env`."""

from __future__ import annotations

import base64
import binascii
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    BeforeValidator,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.core.limits import NO_LIMITS, Limits, LimitsFileError, load_limits
from app.core.urls import MAX_CALLBACK_URL_LENGTH, UrlPolicyError, check_outbound_url

STORAGE_SCHEMES = ("file", "s3", "gs", "az", "memory")
DATABASE_DRIVERS = ("sqlite+aiosqlite", "postgresql+asyncpg")
# URLs without the async driver name get the one this service ships.
DATABASE_SCHEME_ALIASES = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
}
# Below these, a key or secret is accepted but reported at start (`Settings.weaknesses`); with
# evolink a callback or console secret shorter than MIN_SECRET_LENGTH stops the process.
MIN_KEY_LENGTH = 16
MIN_SECRET_LENGTH = 32
MIN_NOTIFY_SECRET_BYTES = 24
# Values that look like someone forgot to set a real secret.
PLACEHOLDER_SECRETS = frozenset({"changeme", "change-me", "secret", "password", "xxx", "todo"})
# The longest callback path the service appends to the public base URL:
# "/callbacks/evolink/" + a 36-char task id + "/" + a 32-char nonce + "/" + a 43-char token
# (app/core/callback_tokens.py).
CALLBACK_PATH_LENGTH = len("/callbacks/evolink/") + 36 + 1 + 32 + 1 + 43
SIMULATOR_API_KEY = "sk-evo-simulator"
SIMULATOR_CALLBACK_SECRET = "simulator-mode-only-callback-secret-not-for-production"  # noqa: S105


def _seconds(value: object) -> object:
    """Durations are given in seconds ("60", "0.5"); ISO 8601 durations work too."""
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return value
    return value


Seconds = Annotated[timedelta, BeforeValidator(_seconds)]


def _empty_is_none(value: object) -> object:
    """An empty variable is the same as an unset one."""
    return None if isinstance(value, str) and not value.strip() else value


def _schedule(value: object) -> object:
    """A retry schedule: comma-separated seconds ("5,30,120"), or a sequence of them."""
    if isinstance(value, str):
        parts = [part.strip() for part in value.split(",")]
        if not all(parts):
            raise ValueError("expected comma-separated seconds, e.g. 5,30,120")
        return [_seconds(part) for part in parts]
    return value


Schedule = Annotated[tuple[Seconds, ...], NoDecode, BeforeValidator(_schedule)]
# After a failed notification attempt, wait the next of these; when they run out, give up.
NOTIFY_RETRY_SCHEDULE = "5,30,120,600,1800,3600,7200,14400,28800"


def parse_key_pairs(raw: str | None) -> dict[str, str]:
    """Parse `name:key,name2:key2` into {key: name}; refuse empty and repeated keys."""
    pairs: dict[str, str] = {}
    if raw is None or not raw.strip():
        return pairs
    for item in raw.split(","):
        name, sep, key = item.strip().partition(":")
        name, key = name.strip(), key.strip()
        if not sep or not name or not key:
            raise ValueError("expected comma-separated name:key pairs")
        if key in pairs:
            raise ValueError("a key is given twice")
        pairs[key] = name
    return pairs


class Settings(BaseSettings):
    """Every knob of the service; documented in docs/configuration.md (tests/docs checks it)."""

    model_config = SettingsConfigDict(
        env_prefix="IMAGEGEN_", env_file=".env", extra="ignore", frozen=True
    )

    database_url: str = "sqlite+aiosqlite:///./var/imagegen.db"
    storage_url: str = "file://./var/images"
    provider: Literal["evolink", "simulator"] = "evolink"
    provider_base_url: str = "https://api.evolink.ai"
    provider_api_key: SecretStr | None = None
    public_base_url: str | None = None
    callback_secret: SecretStr | None = None
    api_keys: SecretStr | None = None
    notify_secret: SecretStr | None = None
    operator_keys: SecretStr | None = None
    console_secret: SecretStr | None = None
    allow_private_networks: bool = False
    poll_after_seconds: Seconds = timedelta(seconds=60)
    run_workers: bool = True
    reference_delivery: Literal["signed-url", "provider-files"] = "signed-url"
    provider_files_base_url: str = "https://files-api.evolink.ai"
    upload_ttl_seconds: Seconds = Field(default=timedelta(days=1), gt=timedelta(0))
    limits_file: Annotated[Path | None, BeforeValidator(_empty_is_none)] = None

    # Choices of this implementation (documented in docs/configuration.md).
    poll_max_wait_seconds: Seconds = timedelta(hours=2)
    submit_max_wait_seconds: Seconds = timedelta(hours=1)
    submit_uncertain_wait_seconds: Seconds = timedelta(minutes=15)
    provider_create_timeout_seconds: float = Field(default=30.0, gt=0, le=300)
    max_image_bytes: int = Field(default=50 * 1024 * 1024, ge=1024)
    archive_deadline_seconds: Seconds = timedelta(hours=20)
    image_redirect_seconds: Seconds = timedelta(0)
    worker_concurrency: int = Field(default=8, ge=1, le=256)
    job_lease_seconds: Seconds = timedelta(seconds=30)
    notify_retry_schedule: Schedule = Field(default=NOTIFY_RETRY_SCHEDULE, validate_default=True)
    notify_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    provider_rate_limit_wait_seconds: Seconds = timedelta(seconds=60)
    notify_slot_share: float = Field(default=0.5, gt=0, le=1)
    notify_breaker_failures: int = Field(default=5, ge=1, le=1000)
    notify_breaker_open_seconds: Seconds = timedelta(seconds=60)
    shutdown_grace_seconds: Seconds = timedelta(seconds=20)
    provider_credits_poll_seconds: Seconds = Field(default=timedelta(minutes=5), gt=timedelta(0))
    provider_credits_warn_below: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    worker_metrics_port: int | None = Field(default=None, ge=1, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    _limits: Limits = PrivateAttr(default=NO_LIMITS)

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        scheme, sep, rest = value.partition("://")
        driver = DATABASE_SCHEME_ALIASES.get(scheme, scheme)
        if not sep or driver not in DATABASE_DRIVERS:
            raise ValueError(f"must start with one of {', '.join(DATABASE_DRIVERS)}")
        return f"{driver}://{rest}"

    @field_validator("storage_url")
    @classmethod
    def _known_storage(cls, value: str) -> str:
        scheme = value.split("://", 1)[0] if "://" in value else ""
        if scheme not in STORAGE_SCHEMES:
            raise ValueError(f"unknown storage scheme; use one of {', '.join(STORAGE_SCHEMES)}")
        return value

    @field_validator("public_base_url", "provider_base_url", "provider_files_base_url")
    @classmethod
    def _origin_without_slash(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an absolute http(s) URL")
        if parts.query or parts.fragment:
            raise ValueError("must not carry a query or fragment")
        return value.rstrip("/")

    @field_validator("notify_retry_schedule")
    @classmethod
    def _positive_delays(cls, value: tuple[timedelta, ...]) -> tuple[timedelta, ...]:
        if any(delay <= timedelta(0) for delay in value):
            raise ValueError("every delay must be more than 0 seconds")
        return value

    @field_validator("api_keys", "operator_keys")
    @classmethod
    def _key_pairs(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_key_pairs(value.get_secret_value())
        return value

    @field_validator("notify_secret")
    @classmethod
    def _whsec(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        raw = value.get_secret_value()
        if not raw.startswith("whsec_"):
            raise ValueError("must start with whsec_ (Standard Webhooks)")
        try:
            decoded = base64.b64decode(raw.removeprefix("whsec_"), validate=True)
        except binascii.Error as exc:
            raise ValueError("the part after whsec_ must be base64") from exc
        if not decoded:
            raise ValueError("the part after whsec_ is empty")
        return value

    @model_validator(mode="after")
    def _coherent(self) -> Settings:
        if self.provider == "evolink":
            _require(self.provider_api_key, "IMAGEGEN_PROVIDER_API_KEY")
            _require(self.public_base_url, "IMAGEGEN_PUBLIC_BASE_URL")
            _require(self.callback_secret, "IMAGEGEN_CALLBACK_SECRET")
            if self.operators:
                _require(
                    self.console_secret,
                    "IMAGEGEN_CONSOLE_SECRET",
                    "required when IMAGEGEN_OPERATOR_KEYS is set with IMAGEGEN_PROVIDER=evolink",
                )
            for variable, secret in self._secrets():
                if len(secret) < MIN_SECRET_LENGTH:
                    raise ValueError(
                        f"{variable}: must be at least {MIN_SECRET_LENGTH} characters with "
                        "IMAGEGEN_PROVIDER=evolink; use random ones (openssl rand -base64 48)"
                    )
        if self.public_base_url is not None:
            # With the built-in simulator only the service itself calls this URL back.
            own_only = self.provider == "simulator"
            try:
                check_outbound_url(
                    self.public_base_url,
                    allow_private=self.allow_private_networks or own_only,
                    what="IMAGEGEN_PUBLIC_BASE_URL",
                )
            except UrlPolicyError as exc:
                raise ValueError(
                    f"{exc} (set IMAGEGEN_ALLOW_PRIVATE_NETWORKS=true for local development)"
                ) from exc
            longest = len(self.public_base_url) + CALLBACK_PATH_LENGTH
            if longest > MAX_CALLBACK_URL_LENGTH:
                raise ValueError(
                    f"IMAGEGEN_PUBLIC_BASE_URL: callback URLs would be {longest} characters, "
                    f"over the provider's limit of {MAX_CALLBACK_URL_LENGTH}"
                )
        if self.limits_file is not None:
            try:
                self._limits = load_limits(self.limits_file, set(self.callers.values()))
            except LimitsFileError as exc:
                raise ValueError(f"IMAGEGEN_LIMITS_FILE: {exc}") from None
        return self

    def weaknesses(self) -> list[str]:
        """Keys and secrets that work but are easy to guess: one line each, naming the variable,
        for the operator (logged at start; they do not stop it, except the callback and console
        secrets with evolink, see `_coherent`)."""
        found: list[str] = []
        for variable, pairs in (
            ("IMAGEGEN_API_KEYS", self.callers),
            ("IMAGEGEN_OPERATOR_KEYS", self.operators),
        ):
            short = sorted(name for key, name in pairs.items() if len(key) < MIN_KEY_LENGTH)
            if short:
                found.append(
                    f"{variable}: the keys of {', '.join(short)} are shorter than "
                    f"{MIN_KEY_LENGTH} characters; use long random keys"
                )
        for variable, secret in self._secrets():
            if len(secret) < MIN_SECRET_LENGTH or secret.lower() in PLACEHOLDER_SECRETS:
                found.append(f"{variable}: use at least {MIN_SECRET_LENGTH} random characters")
        if self.console_secret is not None and self.console_secret == self.callback_secret:
            found.append(
                "IMAGEGEN_CONSOLE_SECRET: the same as IMAGEGEN_CALLBACK_SECRET; give the console "
                "a secret of its own (its cookies would let visitors test guesses of both)"
            )
        if self.notify_secret is not None:
            raw = self.notify_secret.get_secret_value().removeprefix("whsec_")
            if len(base64.b64decode(raw)) < MIN_NOTIFY_SECRET_BYTES:
                found.append(
                    f"IMAGEGEN_NOTIFY_SECRET: use at least {MIN_NOTIFY_SECRET_BYTES} random "
                    "bytes after whsec_ (Standard Webhooks suggests 24 to 64)"
                )
        return found

    def _secrets(self) -> list[tuple[str, str]]:
        """(variable, value) of the callback and console secrets that are set (not empty)."""
        return [
            (variable, secret.get_secret_value())
            for variable, secret in (
                ("IMAGEGEN_CALLBACK_SECRET", self.callback_secret),
                ("IMAGEGEN_CONSOLE_SECRET", self.console_secret),
            )
            if secret is not None and secret.get_secret_value()
        ]

    @property
    def callers(self) -> dict[str, str]:
        """API key -> caller name."""
        raw = self.api_keys.get_secret_value() if self.api_keys else None
        return parse_key_pairs(raw)

    @property
    def operators(self) -> dict[str, str]:
        """Operator key -> operator name."""
        raw = self.operator_keys.get_secret_value() if self.operator_keys else None
        return parse_key_pairs(raw)

    @property
    def limits(self) -> Limits:
        """The limits file as read at start (none: no limits)."""
        return self._limits

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def callback_secret_bytes(self) -> bytes:
        """The key that derives callback tokens (a fixed one in simulator mode only)."""
        if self.callback_secret is not None:
            return self.callback_secret.get_secret_value().encode()
        return SIMULATOR_CALLBACK_SECRET.encode()


def _require(
    value: object, variable: str, why: str = "required when IMAGEGEN_PROVIDER=evolink"
) -> None:
    if value is None or (isinstance(value, SecretStr) and not value.get_secret_value()):
        raise ValueError(f"{variable}: {why}")


_FIELD_TO_VARIABLE = {name: f"IMAGEGEN_{name.upper()}" for name in Settings.model_fields}


def describe_error(error: ValidationError) -> str:
    """One line naming the variable that is wrong and why."""
    first = error.errors()[0]
    location = first.get("loc") or ()
    message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    if location:
        variable = _FIELD_TO_VARIABLE.get(str(location[0]), str(location[0]))
        return f"configuration error: {variable}: {message}"
    return f"configuration error: {message}"
