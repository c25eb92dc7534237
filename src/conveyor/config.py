"""Settings from ``conveyor.yaml`` and ``CONVEYOR_*`` environment variables.

Precedence, highest first: explicit arguments, environment (``CONVEYOR_URL``,
nested with ``__`` as in ``CONVEYOR_WORKER__CONCURRENCY=20``), the YAML file
(``CONVEYOR_CONFIG`` or ``./conveyor.yaml``), defaults. Unknown keys are refused, so a
typo in the file is an error, not a silently ignored setting.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from conveyor.errors import ConfigError, InvalidInput
from conveyor.features.flow import parse_rate
from conveyor.priority import PriorityRule, default_rules
from conveyor.retry import RetryPolicy
from conveyor.schedules import ScheduleConfig

DEFAULT_URL = "sqlite:///conveyor.db"
MAX_CONCURRENCY = 10_000  # attempts one worker runs at once


def _check_rate(value: str | None) -> str | None:
    if value is not None:
        try:
            parse_rate(value)
        except InvalidInput as exc:  # a ValueError to pydantic, reported with the rest
            raise ValueError(exc.message) from exc
    return value


class QueueConfig(BaseModel):
    """One queue's bound and flow limits (cluster-wide; see docs/flow-control.md)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    max_length: int | None = Field(default=None, ge=1)
    rate_limit: str | None = None  # "100/s", "5/m", "1000/h"
    concurrency: int | None = Field(default=None, ge=1)  # running tasks at most

    _rate = field_validator("rate_limit")(_check_rate)


class TaskConfig(BaseModel):
    """Flow limits of one task name; they override the ``@app.task`` options."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    rate_limit: str | None = None
    concurrency: int | None = Field(default=None, ge=1)
    breaker_threshold: int | None = Field(default=None, ge=1)
    breaker_cooldown: float | None = Field(default=None, gt=0, le=7 * 86400)

    _rate = field_validator("rate_limit")(_check_rate)


class BreakerConfig(BaseModel):
    """The default circuit breaker of every registered task (``threshold`` None: off)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    threshold: int | None = Field(default=None, ge=1)  # consecutive failures that open it
    cooldown: float = Field(default=30.0, gt=0, le=7 * 86400)  # seconds before the probe


class WorkerConfig(BaseModel):
    """Worker tuning; the defaults follow SPEC §2 and §5."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    concurrency: int = Field(default=10, ge=1, le=MAX_CONCURRENCY)
    pool: Literal["async", "threads", "processes"] = "async"
    # extra claims beyond free slots: a number, or "auto" (see conveyor.worker.runner)
    prefetch: int | Literal["auto"] = "auto"
    lease_seconds: float = Field(default=30.0, gt=0)
    heartbeat_interval: float = Field(default=10.0, gt=0)
    reap_interval: float = Field(default=5.0, gt=0)
    metrics_interval: float = Field(default=1.0, gt=0)  # how often attempt figures reach the engine
    offline_after: float = Field(default=30.0, gt=0)
    shutdown_grace: float = Field(default=30.0, ge=0)
    poll_min: float = Field(default=0.001, gt=0)  # adaptive poll across processes
    poll_max: float = Field(default=0.5, gt=0)
    finish_batch: int = Field(default=256, ge=1)  # outcomes written per transaction
    finish_delay: float = Field(default=0.002, ge=0)  # max wait to fill a batch
    scheduler: bool = True  # fire periodic schedules from this worker (conveyor.schedules)

    @field_validator("prefetch", mode="before")
    @classmethod
    def _prefetch(cls, value: Any) -> int | str:
        """One clear message for a bad value instead of one per member of the union."""
        if value == "auto":
            return "auto"
        try:
            number = int(value)
        except (TypeError, ValueError):
            number = -1
        if isinstance(value, bool) or number < 0 or number > 10_000 or str(number) != str(value).strip():
            raise ValueError(f"expected 'auto' or a number of tasks from 0 to 10000, got {value!r}")
        return number


class ApiToken(BaseModel):
    """One API bearer token, stored as the SHA-256 hex digest of the secret (never the secret)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field(min_length=1, max_length=100)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    role: Literal["read", "submit", "admin"] = "read"


class ApiConfig(BaseModel):
    """``conveyor api`` settings: tokens, per-token rate limit, body size, backpressure hint."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    tokens: list[ApiToken] = Field(default_factory=list)
    rate_limit: float = Field(default=1000.0, ge=0)  # requests/s per token (0: off), per API process
    rate_burst: int = Field(default=2000, ge=1)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    max_batch: int = Field(default=1000, ge=1, le=100_000)
    queue_full_retry_after: int = Field(default=1, ge=1)  # seconds, the 503 QueueFull hint
    access_log: bool = True


NotifyEvent = Literal["task.succeeded", "task.failed", "task.dead_lettered", "task.cancelled", "workflow.finished"]


class _Target(BaseModel):
    """Which events go to one target: ``queues`` and ``tasks`` (shell patterns such as
    ``email.*``) narrow them; empty means every queue or task name."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field(default="", max_length=100)  # how the outbox remembers it; default: url / first address
    events: list[NotifyEvent] = Field(min_length=1)
    queues: list[str] = Field(default_factory=list)
    tasks: list[str] = Field(default_factory=list)


class WebhookTarget(_Target):
    """POST each event as JSON, signed with HMAC-SHA256 (``conveyor.notify.verify``)."""

    url: str = Field(pattern=r"^https?://")
    secret: str = Field(min_length=16)
    timeout: float = Field(default=10.0, gt=0, le=300)
    batch: int = Field(default=1, ge=1, le=1000)  # events per request; >1 posts {"events": [...]}

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        """A URL every delivery would fail on is a config error, not a parked event."""
        try:
            parts = urlsplit(v)
            port = parts.port  # parsed on access
        except ValueError as exc:  # an unclosed IPv6 '[', a port that is no number or past 65535
            raise ValueError(f"invalid webhook URL {v!r}: {exc}") from None
        if not parts.hostname or port == 0:
            raise ValueError(f"invalid webhook URL {v!r}: expected http(s)://host[:port]/path")
        return v

    @property
    def key(self) -> str:
        """The name the outbox remembers it by: ``name``, else the URL."""
        return self.name or self.url


class EmailTarget(_Target):
    """Send each event as a plain-text email through ``notifications.smtp``."""

    to: list[str] = Field(min_length=1)

    @property
    def key(self) -> str:
        """The name the outbox remembers it by: ``name``, else the addresses."""
        return self.name or ",".join(self.to)


class SmtpConfig(BaseModel):
    """The SMTP server email targets use (``smtplib``: plain, STARTTLS or TLS)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    host: str = "127.0.0.1"
    port: int = Field(default=25, ge=1, le=65535)
    sender: str = "conveyor@localhost"
    username: str | None = None
    password: str | None = None
    security: Literal["none", "starttls", "tls"] = "none"
    timeout: float = Field(default=10.0, gt=0, le=300)


class NotificationsConfig(BaseModel):
    """Webhooks and email on task events (``docs/notifications.md``). Delivery retries
    with exponential backoff from ``backoff`` up to ``backoff_max`` seconds and gives
    up on an event after ``max_deliveries`` rounds."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    webhooks: list[WebhookTarget] = Field(default_factory=list)
    emails: list[EmailTarget] = Field(default_factory=list)
    smtp: SmtpConfig = Field(default_factory=SmtpConfig)
    batch: int = Field(default=100, ge=1, le=10_000)  # events claimed per round
    lease_seconds: float = Field(default=60.0, gt=0)  # a crashed deliverer's events return after this
    poll_interval: float = Field(default=1.0, gt=0, le=60)  # idle wait between rounds
    backoff: float = Field(default=1.0, gt=0)
    backoff_max: float = Field(default=300.0, gt=0)
    max_deliveries: int = Field(default=25, ge=1)

    @model_validator(mode="after")
    def _distinct_names(self) -> NotificationsConfig:
        names = [t.key for t in self.targets()]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"notification targets need distinct names (give each a name:); repeated: {repeated}")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.webhooks or self.emails)

    def targets(self) -> list[WebhookTarget | EmailTarget]:
        return [*self.webhooks, *self.emails]

    def events(self) -> frozenset[str]:
        """Every event some target wants: what the engine is asked to record."""
        return frozenset(e for t in self.targets() for e in t.events)


class Settings(BaseSettings):
    """All of Conveyor's configuration in one validated model."""

    model_config = SettingsConfigDict(
        env_prefix="CONVEYOR_", env_nested_delimiter="__", extra="forbid", allow_inf_nan=False
    )

    url: str = DEFAULT_URL
    queues: dict[str, QueueConfig] = Field(default_factory=dict)
    priority_rules: list[PriorityRule] = Field(default_factory=default_rules)  # [] turns them off
    default_priority: int = Field(default=5, ge=0, le=10)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    worker: WorkerConfig = Field(default_factory=WorkerConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    schedules: dict[str, ScheduleConfig] = Field(default_factory=dict)  # name -> cron or every
    tasks: dict[str, TaskConfig] = Field(default_factory=dict)  # task name -> flow limits
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    aging_interval: float | None = Field(default=None, ge=0)  # seconds per +1 priority; None/0: off
    notifications: NotificationsConfig = Field(default_factory=NotificationsConfig)
    tracing: bool = False  # OpenTelemetry spans for submits and attempts (conveyor.tracing)
    # seconds the sync calls' event loop polls before it sleeps (conveyor.spin; 0: never)
    loop_spin: float = Field(default=0.0005, ge=0, le=0.01)
    auto_migrate: bool = True

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlSource(settings_cls))

    def max_lengths(self) -> dict[str, int]:
        return {name: q.max_length for name, q in self.queues.items() if q.max_length is not None}


class _YamlSource(PydanticBaseSettingsSource):
    """Reads ``CONVEYOR_CONFIG`` or ``./conveyor.yaml`` when present."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        explicit = os.environ.get("CONVEYOR_CONFIG")
        path = Path(explicit) if explicit else Path("conveyor.yaml")
        if not path.exists():
            if explicit:
                raise ConfigError(f"invalid configuration: config file {path} (CONVEYOR_CONFIG) does not exist")
            return {}
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except OSError as exc:  # a directory, no permission...
            raise ConfigError(f"invalid configuration: config file {path}: cannot read it: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"invalid configuration: config file {path}: not UTF-8 text ({exc.reason})") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"invalid configuration: config file {path}: not valid YAML: {exc}") from exc
        except RecursionError:
            raise ConfigError(f"invalid configuration: config file {path}: nested too deeply") from None
        if not isinstance(data, dict):
            raise ConfigError(f"invalid configuration: config file {path}: expected a mapping at the top level")
        return data


def load_settings(**overrides: Any) -> Settings:
    """Build settings, turning validation errors into one readable ``ConfigError``."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**clean)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from exc
    except SettingsError as exc:
        raise _env_error(exc) from exc
    except RecursionError:  # a CONVEYOR_* JSON value nested thousands deep
        raise ConfigError("invalid configuration: a CONVEYOR_* variable is nested too deeply") from None


def _env_error(exc: SettingsError) -> ConfigError:
    """Name the ``CONVEYOR_*`` variable that failed to decode: pydantic-settings names only the field."""
    found = re.search(r'field "(\w+)"', str(exc))
    prefix = f"CONVEYOR_{found.group(1).upper()}" if found else "CONVEYOR_"
    names = sorted(k for k in os.environ if k.upper() == prefix or k.upper().startswith(f"{prefix}__"))
    cause = exc.__cause__
    problem = f"not valid JSON: {cause}" if isinstance(cause, json.JSONDecodeError) else str(cause or exc)
    return ConfigError(f"invalid configuration: {' or '.join(names) or prefix}: {problem}")
