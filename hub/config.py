"""The hub's YAML config as frozen, validated pydantic models; secrets come from elsewhere."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cnconfig import load_model
from wire import DEFAULT_ROOT

DEFAULT_PASSWORD_ENV = "CITYNERVE_HUB_MQTT_PASSWORD"
CREDENTIAL_NAME = "mqtt_password"  # systemd LoadCredential=mqtt_password:...


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MqttSettings(_Model):
    """Broker connection; the password is never in the file (see ``mqtt_password``)."""

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = None
    password_env: str = DEFAULT_PASSWORD_ENV
    password_file: Path | None = None
    client_id: str = Field(default="citynerve-hub", min_length=1, max_length=64)
    topic_root: str = DEFAULT_ROOT
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    # How long the broker keeps the hub's session (subscriptions + queued QoS 1) while it is away.
    session_expiry_s: int = Field(default=86400, ge=0)
    protocol: str = Field(default="3.1.1", pattern=r"^(5|3\.1\.1)$")

    @field_validator("topic_root")
    @classmethod
    def _root(cls, v: str) -> str:
        if not v or v.startswith("/") or v.endswith("/") or "+" in v or "#" in v:
            raise ValueError("must be a topic prefix without wildcards or leading/trailing '/'")
        return v


class HttpSettings(_Model):
    """Where the REST API listens."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)


class IngestSettings(_Model):
    """Queue bound and batching of the ingest writer."""

    queue_max: int = Field(default=1000, ge=1, le=65535)
    batch_max_samples: int = Field(default=20000, ge=1)
    batch_interval_ms: int = Field(default=50, ge=0, le=10000)
    # A gateway whose clock is further than this from the hub's is flagged (API, log, counter).
    clock_skew_max_ms: int = Field(default=5000, ge=1)


class CommandSettings(_Model):
    """Command lifetimes."""

    default_ttl_s: int = Field(default=30, ge=1)
    max_ttl_s: int = Field(default=3600, ge=1)
    sweep_interval_s: float = Field(default=1.0, gt=0, le=60)

    @model_validator(mode="after")
    def _ttl(self) -> CommandSettings:
        if self.default_ttl_s > self.max_ttl_s:
            raise ValueError("default_ttl_s must not exceed max_ttl_s")
        return self


class PolicySettings(_Model):
    """The lighting-policy runner (docs/policy.md)."""

    #: At most this many policy commands per second to one gateway: a DALI bus carries ~30
    #: frames/s and polling and sensors need the rest (group commands make this plenty).
    rate_per_gateway: float = Field(default=10.0, gt=0, le=1000)
    #: The longest the runner sleeps without re-evaluating (it also wakes at every change).
    max_sleep_s: float = Field(default=30.0, gt=0, le=3600)


class HubSettings(_Model):
    """Everything the hub reads from its config file."""

    data_dir: Path = Path("./var/hub")
    database: str = ""
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    commands: CommandSettings = Field(default_factory=CommandSettings)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)$")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, v: object) -> object:
        return v.upper() if isinstance(v, str) else v

    @field_validator("database")
    @classmethod
    def _db(cls, v: str) -> str:
        if v and "://" not in v:
            raise ValueError("must be a database URL such as sqlite:///var/lib/citynerve/hub.db")
        return v

    @property
    def db_url(self) -> str:
        """The tortoise database URL, defaulting to a SQLite file in ``data_dir``."""
        return self.database or f"sqlite://{self.data_dir}/citynerve.db"


def load_settings(path: str | Path) -> HubSettings:
    """Read and validate a hub config file (raises cnconfig.ConfigError)."""
    return load_model(path, HubSettings)


def mqtt_password(m: MqttSettings, environ: Mapping[str, str] | None = None) -> str | None:
    """The broker password: ``password_file``, a systemd credential, or the named env var."""
    env = os.environ if environ is None else environ
    if m.password_file is not None:
        return m.password_file.read_text(encoding="utf-8").strip()
    cred_dir = env.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        cred = Path(cred_dir) / CREDENTIAL_NAME
        if cred.is_file():
            return cred.read_text(encoding="utf-8").strip()
    return env.get(m.password_env) or None


def log_level(settings: HubSettings) -> int:
    """The numeric logging level."""
    return int(logging.getLevelName(settings.log_level))
