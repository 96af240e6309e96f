"""Configuration, read from the environment and a `.env` file (docs/configuration.md: names
other programs rely on)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, IPvAnyNetwork, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

REGION_HOSTS = {
    "singapore": "https://api.exotel.com",
    "mumbai": "https://api.in.exotel.com",
}

# Used only in development when CALLBACK_SECRETS is unset, so `make run` works out of the box.
# Production refuses to start without real secrets.
DEVELOPMENT_CALLBACK_SECRET = "exocall-development-callback-secret-not-for-production"  # noqa: S105
# The credentials exocall sends, and its built-in simulator answers to, when no Exotel key is set.
SIMULATOR_ACCOUNT_SID = "simulated"
SIMULATOR_API_KEY = "simulator-key"
SIMULATOR_API_TOKEN = "simulator-token"  # noqa: S105
# The applets the simulator's flows are made of (app.exotel.simulator).
SimulatedApplet = Literal["play", "gather", "passthru", "passthru_async", "hangup"]


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    # Unset: the embedded server, its data in ./pgdata (app/db/embedded.py).
    database_url: str | None = None
    # PostgreSQL is reached through PgBouncer in transaction pooling (app/db/session.py).
    database_pgbouncer: bool = False

    exotel_account_sid: str | None = None
    exotel_api_key: SecretStr | None = None
    exotel_api_token: SecretStr | None = None
    exotel_region: Literal["singapore", "mumbai"] = "singapore"
    exotel_api_base_url: str | None = None
    exotel_caller_id: str | None = None
    exotel_flow_url_template: str = "http://my.exotel.com/{account_sid}/exoml/start_voice/{app_id}"
    exotel_rate_limit: int = Field(200, ge=1)
    exotel_rate_window_seconds: float = Field(60, gt=0)
    # Widens the rate window by the most time a request may take between our grant and Exotel
    # seeing it (scheduling, the network): 1 s costs 1.6% of a 60 s window's throughput.
    exotel_rate_margin_seconds: float = Field(1.0, ge=0)
    exotel_timeout_seconds: float = Field(30, gt=0)
    # Off by default: some accounts answer 400 when StatusCallbackEvents is sent with Url.
    exotel_status_callback_events: Annotated[list[Literal["terminal", "answered"]], NoDecode] = []
    exotel_status_callback_content_type: Literal["multipart/form-data", "application/json"] = (
        "multipart/form-data"
    )

    public_base_url: str = "http://127.0.0.1:8000"
    # Transactions storing status callbacks at once, each committing a batch (group commit).
    callback_writers: int = Field(3, ge=1)
    # Callbacks received while the database is unreachable wait here (a volume in Docker).
    spool_dir: Path = Path("./spool")
    spool_replay_seconds: float = Field(2, gt=0)
    # Bodies over this are refused with 413 (a batch of 1000 calls is about 150 KB).
    max_body_bytes: int = Field(1_048_576, ge=1024)
    callback_secrets: Annotated[list[SecretStr], NoDecode] = []
    # Where status callbacks may come from (CIDRs); empty accepts any source. Exotel publishes
    # no addresses, so this is for deployments that know theirs (an egress proxy, a VPN).
    callback_allowed_ips: Annotated[list[IPvAnyNetwork], NoDecode] = []
    # Proxies in front of the service (addresses or CIDRs) whose X-Forwarded-For and
    # X-Forwarded-Proto are believed; nobody else's are.
    trusted_proxies: Annotated[list[str], NoDecode] = []
    api_keys: Annotated[list[SecretStr], NoDecode] = []
    # `/metrics` asks for an API key like the internal API, unless this says it is open (for a
    # Prometheus that can only reach it on a private network).
    metrics_public: bool = False
    exocall_env: Literal["development", "production"] = "development"
    # Log lines: JSON objects, one per line (the default in production), or text for people.
    log_format: Literal["json", "text"] | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # On SIGTERM, how long requests in flight get to be answered before the app shuts down.
    shutdown_grace_seconds: int = Field(20, ge=1)

    # Work done later (`app.jobs`): how often an idle kind looks for work another replica
    # queued (work queued here wakes it at once).
    jobs_poll_seconds: float = Field(0.5, gt=0)
    # Every process says it lives this often; a claim whose process has not said so for the
    # lease is taken by another as lost (docs/jobs.md). A shorter lease takes a killed
    # replica's work sooner, and also that of a live one stalled for as long.
    jobs_beat_seconds: float = Field(5, gt=0)
    jobs_lease_seconds: float = Field(15, gt=0)

    # The dispatch queue.
    dispatch_wait_seconds: float = Field(10, ge=0)  # how long POST /calls waits for Exotel
    dispatch_concurrency: int = Field(16, ge=1)  # Calls/connect requests in flight per replica
    dispatch_max_attempts: int = Field(8, ge=1)  # connection failures before a call is rejected

    # Reconciliation.
    reconcile_interval_seconds: float = Field(30, gt=0)
    # A call Exotel accepted is first looked up this long after, if no callback ended it; then
    # again after half its age, at most RECONCILE_RECHECK_SECONDS (CallState.look_up_later).
    reconcile_first_lookup_seconds: float = Field(60, ge=0)
    reconcile_recheck_seconds: float = Field(180, ge=0)
    # An `unknown` call Exotel lists nothing for this long after time_out + time_limit was
    # never dialled (bulk details never list a call in progress, and it has no SID to ask for).
    reconcile_grace_seconds: float = Field(120, ge=0)
    # Exotel's own limit when a call names none (docs/exotel.md: TimeLimit at most 4 h).
    default_time_limit_seconds: int = Field(14400, ge=1)

    # Events and webhooks (docs/events.md).
    event_retention_days: float = Field(90, gt=0)
    # Hosts (`hooks.example.com`, `*.internal`) and CIDRs subscribers may be at. Unset: loopback
    # and private ranges in development, nothing in production.
    webhook_allowed_targets: Annotated[list[str] | None, NoDecode] = None
    webhook_timeout_seconds: float = Field(15, gt=0)
    # Seconds between an event's attempts, after the first (Svix's schedule, about 27.6 h).
    webhook_retry_schedule: Annotated[list[float], NoDecode] = [
        5,
        300,
        1800,
        7200,
        18000,
        36000,
        36000,
    ]
    webhook_disable_after_seconds: float = Field(432000, gt=0)
    webhook_secret_overlap_seconds: float = Field(86400, ge=0)
    webhook_concurrency: int = Field(64, ge=1)  # deliveries in flight per replica
    # Deliveries in flight to one endpoint, across replicas: a slow one holds back no other.
    webhook_endpoint_concurrency: int = Field(16, ge=1)
    # false: `exocall serve` sends no webhooks, and `exocall deliver` processes beside it do.
    webhook_delivery_in_serve: bool = True

    # Passthru (docs/api.md, "Passthru"): per Exotel app id, the digits answered 302 (the flow's
    # other branch), as JSON: {"12345": ["2"]}. Every other Passthru request is answered 200.
    passthru_redirect_digits: dict[str, list[str]] = {}

    # Recordings (docs/recordings.md): where they are kept, a directory or an S3-compatible
    # bucket (`s3://bucket/prefix`), with that store's endpoint, region and keys (unset keys:
    # the store's own chain, AWS_* variables and instance roles).
    recording_store: str = "./recordings"
    recording_s3_endpoint: str | None = None
    recording_s3_region: str = "ap-south-1"
    recording_s3_access_key_id: str | None = None
    recording_s3_secret_access_key: SecretStr | None = None
    # GET /calls/{id}/recording streams the audio, or redirects to a URL the store signs for
    # RECORDING_PRESIGN_SECONDS (an S3 store only; a directory is always streamed).
    recording_serve: Literal["stream", "redirect"] = "stream"
    recording_presign_seconds: int = Field(300, ge=1, le=604800)
    # Where recording URLs are fetched with the Exotel credentials, over HTTPS: hosts (`*.`
    # takes subdomains), each maybe with a path prefix. The API's own origin always is (the
    # simulator's); any other URL fails unfetched: the credentials never go there.
    recording_url_hosts: Annotated[list[str], NoDecode] = [
        "*.exotel.com",
        "*.exotel.in",
        "s3-ap-southeast-1.amazonaws.com/exotelrecordings/",  # where Exotel keeps them
    ]
    # Archived audio is deleted after this many days (unset: kept); the call keeps the fact.
    recording_retention_days: float | None = Field(None, gt=0)
    # false: this replica fetches no recordings (the others do; it still serves them).
    recording_archive: bool = True
    recording_concurrency: int = Field(2, ge=1)  # recordings fetched at once per replica
    recording_max_attempts: int = Field(8, ge=1)  # fetches that failed, then `failed`
    # After Exotel refuses the credentials (401/403), nothing is fetched for this long.
    recording_auth_pause_seconds: float = Field(600, gt=0)

    # The built-in simulator (used when no Exotel key is set).
    simulator_callback_delay_seconds: float = Field(2.0, ge=0)
    # Per app id, the flow the simulator runs (`app.exotel.simulator`): app 927 asks to confirm
    # (1) or cancel (2), and tells exocall's /passthru what was pressed.
    simulator_flows: dict[str, list[SimulatedApplet]] = {
        "927": ["play", "gather", "passthru", "hangup"]
    }

    _split = field_validator(
        "callback_secrets",
        "api_keys",
        "exotel_status_callback_events",
        "callback_allowed_ips",
        "trusted_proxies",
        "webhook_allowed_targets",
        "webhook_retry_schedule",
        "recording_url_hosts",
        mode="before",
    )(_split_csv)

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _positive_delays(cls, value: list[float]) -> list[float]:
        if not value or any(delay <= 0 for delay in value):
            raise ValueError("give one or more positive delays in seconds")
        return value

    @field_validator(
        "exotel_account_sid",
        "exotel_api_key",
        "exotel_api_token",
        "exotel_api_base_url",
        "exotel_caller_id",
        "recording_s3_endpoint",
        "recording_s3_access_key_id",
        "recording_s3_secret_access_key",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # `EXOTEL_API_KEY=` in a .env (as .env.example has it) means "not set": without a key
        # the simulator serves, rather than a real Exotel called with an empty key.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("public_base_url", "exotel_api_base_url")
    @classmethod
    def _strip_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value

    @model_validator(mode="after")
    def _lease_outlasts_beats(self) -> Settings:
        # A process stops claiming once half its lease has passed since its last beat: a lease
        # of two beats or less would stop it between two beats of a healthy heart.
        if self.jobs_lease_seconds <= 2 * self.jobs_beat_seconds:
            raise ValueError("JOBS_LEASE_SECONDS must be more than twice JOBS_BEAT_SECONDS")
        return self

    @model_validator(mode="after")
    def _production_needs_secrets(self) -> Settings:
        if self.exocall_env != "production":
            return self
        required = {
            "API_KEYS": self.api_keys,
            "CALLBACK_SECRETS": self.callback_secrets,
            "EXOTEL_ACCOUNT_SID": self.exotel_account_sid,
            "EXOTEL_API_KEY": self.exotel_api_key,
            "EXOTEL_API_TOKEN": self.exotel_api_token,
        }
        missing = [name for name, value in required.items() if not value]
        if missing:
            raise ValueError(f"EXOCALL_ENV=production requires {', '.join(missing)}")
        if not self.exotel_base_url.startswith("https://"):
            raise ValueError("EXOCALL_ENV=production reaches Exotel over https only")
        return self

    @property
    def logs_as(self) -> Literal["json", "text"]:
        if self.log_format:
            return self.log_format
        return "json" if self.exocall_env == "production" else "text"

    @property
    def uses_simulator(self) -> bool:
        return self.exotel_api_key is None

    @property
    def exotel_base_url(self) -> str:
        return self.exotel_api_base_url or REGION_HOSTS[self.exotel_region]

    @property
    def exotel_credentials(self) -> tuple[str, str]:
        """The API key and token exocall sends: the simulator's without EXOTEL_API_KEY."""
        if self.exotel_api_key is None:
            return SIMULATOR_API_KEY, SIMULATOR_API_TOKEN
        token = self.exotel_api_token.get_secret_value() if self.exotel_api_token else ""
        return self.exotel_api_key.get_secret_value(), token

    @property
    def account_sid(self) -> str:
        return self.exotel_account_sid or SIMULATOR_ACCOUNT_SID

    @cached_property  # read on every status callback
    def signing_secrets(self) -> list[bytes]:
        """Callback secrets as bytes; the first signs, all verify."""
        if self.callback_secrets:
            return [s.get_secret_value().encode() for s in self.callback_secrets]
        return [DEVELOPMENT_CALLBACK_SECRET.encode()]
