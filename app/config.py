"""Configuration, read from the environment and a `.env` file, in groups: each part of the app
receives its own. The names are fixed (other programs set them); docs/configuration.md is made
from the descriptions here (`python -m app.config docs/configuration.md`)."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from app.calls.policy import NumberLimit, Window
from app.numerals import DIGIT, NUMBER_SEPARATORS

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
# The outcomes a number can be told to take in turn (app.exotel.simulator's OutcomeName).
SimulatedOutcome = Literal["completed", "busy", "no-answer", "failed", "dnd", "invalid", "timeout"]


# In production, the least length of each of API_KEYS and CALLBACK_SECRETS: 32 random characters
# are beyond guessing (`openssl rand -hex 32` makes 64).
MIN_SECRET_LENGTH = 32


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def _empty_is_unset(value: object) -> object:
    # `EXOTEL_API_KEY=` in a .env (as .env.example has it) means "not set": without a key the
    # simulator serves, rather than a real Exotel called with an empty key.
    return None if isinstance(value, str) and not value.strip() else value


def _json(value: object) -> object:
    # The environment gives text; values given in code arrive decoded.
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON ({exc})") from None
    return value


# A phone number as a key of SIMULATOR_OUTCOMES: 4 to 15 digits, maybe after a `+`, once the
# separators between them (`+91 90521-61112`) are dropped.
_PHONE_NUMBER = re.compile(rf"\+?{DIGIT}{{4,15}}")
_NUMBER_SEPARATORS = re.compile(f"[{re.escape(NUMBER_SEPARATORS)}]")


def _phone_numbers(value: dict[str, Any]) -> dict[str, Any]:
    """`value`, if each of its keys is a phone number (never shown: numbers are personal)."""
    wrong = [
        key
        for key in value
        if len(key) > 64 or not _PHONE_NUMBER.fullmatch(_NUMBER_SEPARATORS.sub("", key))
    ]
    if wrong:
        raise ValueError(
            f"{len(wrong)} of its numbers are not phone numbers (4 to 15 digits, maybe after "
            "a +, separators allowed)"
        )
    return value


def _http_url(value: str | None) -> str | None:
    """`value` without its trailing slash, if it is an http(s) URL with a host that paths can
    be added to."""
    if value is None:
        return None
    try:
        parts = urlsplit(value.strip())
        valid = parts.scheme in ("http", "https") and parts.port != 0
    except ValueError:  # a bracket left open, a port that is no number or out of range
        valid = False
    if not valid or not parts.hostname or not _HOST_TEXT.fullmatch(parts.hostname):
        raise ValueError("must be an http:// or https:// URL with a host (and a valid port)")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("must have no query, fragment or credentials: paths are added to it")
    return value.strip().rstrip("/")


def _reachable_from_outside(url: str) -> bool:
    """Whether `url` could be reached from another network: not a loopback, private or
    unspecified address written as such, nor `localhost`. (A name is taken at its word.)"""
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return False
    try:
        return ipaddress.ip_address(host).is_global
    except ValueError:
        return True


def _writable_directory(path: Path) -> Path:
    """`path`, if this process can write there: a directory it may write to, or one it may
    create (nothing is created here: not every command writes)."""
    existing = path.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{existing} is not writable by this process")
    return path


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_LABEL = r"(?!-)[a-z0-9_-]{1,63}(?<!-)"
_HOST_NAME = re.compile(rf"(\*\.)?({_LABEL}\.)*{_LABEL}", re.IGNORECASE | re.ASCII)
_DOTTED_NUMBERS = re.compile(rf"({DIGIT}|\.)+")
_PORT = re.compile(f"{DIGIT}{{1,5}}")
# What a URL's host may hold: a name, or an address (IPv6 ones without their brackets).
_HOST_TEXT = re.compile(r"[a-z0-9_.:%-]+", re.IGNORECASE | re.ASCII)


@dataclass(frozen=True)
class WebhookTarget:
    """An entry of WEBHOOK_ALLOWED_TARGETS: a network (an address is a network of one) or a
    host name (`*.example.com`: every name under it), on one port or, without one, on any.
    What each allows, app/events/targets.py decides."""

    network: Network | None = None
    host: str | None = None  # lowercase, without a trailing dot
    port: int | None = None

    @classmethod
    def parse(cls, entry: str) -> WebhookTarget:
        """`10.0.0.0/8`, `127.0.0.1:19600`, `[::1]:19600`, `hooks.example.com:8443`,
        `*.internal`... Raises ValueError saying what is wrong with `entry`."""
        where, port = entry.strip(), None
        if not where:
            raise ValueError("an entry is empty")
        if where.startswith("["):  # an IPv6 address or network, maybe with a port
            where, bracket, rest = where[1:].partition("]")
            if not bracket or (rest and not rest.startswith(":")):
                raise ValueError(f"{entry!r}: write an IPv6 address with a port as [::1]:8443")
            port = _port(entry, rest[1:]) if rest else None
            return cls(network=_network(entry, where), port=port)
        if where.count(":") == 1:
            where, _, digits = where.partition(":")
            port = _port(entry, digits)
        if ":" in where or "/" in where or _DOTTED_NUMBERS.fullmatch(where):
            return cls(network=_network(entry, where), port=port)
        name = where.lower().removesuffix(".")
        if not _HOST_NAME.fullmatch(name) or name.rpartition(".")[2].isdigit():
            raise ValueError(f"{entry!r} is not an address, a CIDR or a host name")
        return cls(host=name, port=port)

    def names(self, host: str) -> bool:
        """Whether this entry allows `host` by name."""
        host = host.lower().removesuffix(".")
        if self.host is None:
            return False
        return host == self.host or (self.host.startswith("*.") and host.endswith(self.host[1:]))


def _port(entry: str, digits: str) -> int:
    if not _PORT.fullmatch(digits) or not 1 <= int(digits) <= 65535:
        raise ValueError(f"{entry!r}: a port is a number from 1 to 65535")
    return int(digits)


def _network(entry: str, where: str) -> Network:
    kind = ipaddress.IPv6Network if ":" in where else ipaddress.IPv4Network
    try:
        return kind(where)  # strict: a CIDR with host bits set is a typo
    except ValueError as exc:
        hint = " (an IPv6 address with a port is written [::1]:8443)" if ":" in where else ""
        raise ValueError(f"{entry!r}: {exc}{hint}") from None


def _webhook_targets(value: object) -> object:
    """The entries of WEBHOOK_ALLOWED_TARGETS, each parsed; empty: unset."""
    if isinstance(value, str):
        value = value.split(",") if value.strip() else None
    if not isinstance(value, list):
        return value
    targets, problems = [], []
    for entry in value:
        try:
            targets.append(
                entry if isinstance(entry, WebhookTarget) else WebhookTarget.parse(entry)
            )
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise ValueError("; ".join(problems))
    return targets


class ConfigurationError(ValueError):
    """Settings that cannot work: each problem as (variable, what is wrong), never the value
    (some are secrets)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{name}: {message}" for name, message in problems))
        self.problems = problems


class Group(BaseSettings):
    """One group of settings. A field's variable is the group's prefix and its name, unless it
    has an alias (names older than the groups)."""

    # No value is decoded before validation: lists are comma-separated, and the JSON settings
    # are decoded by their own validators, so that a malformed one is refused by name.
    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", frozen=True, enable_decoding=False
    )
    title: ClassVar[str]

    @classmethod
    def variables(cls) -> dict[str, str]:
        """Each field's variable, by field name."""
        prefix = cls.model_config.get("env_prefix", "")
        return {
            name: str(field.validation_alias or f"{prefix}{name}").upper()
            for name, field in cls.model_fields.items()
        }

    @classmethod
    def load(cls, env_file: str | None, values: dict[str, Any]) -> Group:
        """The group from the environment, `env_file` and `values` (by variable; those of
        this group are taken out of it), over the defaults."""
        given = {}
        for name, variable in cls.variables().items():
            if variable in values:
                key = variable if cls.model_fields[name].validation_alias else name
                given[key] = values.pop(variable)
        try:
            return cls(_env_file=env_file, **given)
        except ValidationError as exc:
            # Each problem once: two bad entries of one JSON setting read alike.
            problems = dict.fromkeys(cls._problem(error) for error in exc.errors())
            raise ConfigurationError(list(problems)) from None

    @classmethod
    def _problem(cls, error: ErrorDetails) -> tuple[str, str]:
        """A validation error as (the variable, what is wrong); the group's title for one of
        several variables together."""
        by_name = cls.variables()
        where = str(error["loc"][0]) if error["loc"] else ""
        variable = by_name.get(where) or (where.upper() if where else cls.title)
        return variable, str(error["msg"]).removeprefix("Value error, ")


def _alias(variable: str, default: Any = ..., **options: Any) -> Any:
    return Field(default, validation_alias=variable, **options)


class ServiceSettings(Group):
    title = "The service"

    env: Literal["development", "production"] = _alias(
        "EXOCALL_ENV",
        "development",
        description="`production` refuses to start without `API_KEYS`, `CALLBACK_SECRETS`, "
        "`PUBLIC_BASE_URL` and Exotel credentials",
    )
    api_keys: list[SecretStr] = _alias(
        "API_KEYS",
        [],
        description="comma-separated bearer tokens for the internal API (in production, "
        f"{MIN_SECRET_LENGTH} characters or more each)",
    )
    metrics_public: bool = _alias(
        "METRICS_PUBLIC",
        False,
        description="`true` serves `/metrics` without an API key (for a Prometheus on a "
        "private network)",
    )
    trusted_proxies: list[IPvAnyNetwork] = _alias(
        "TRUSTED_PROXIES",
        [],
        description="addresses or CIDRs of proxies whose `X-Forwarded-For` and "
        "`X-Forwarded-Proto` are believed; nobody else's are (no `*`: anyone could choose "
        "the address `CALLBACK_ALLOWED_IPS` checks)",
    )
    max_body_bytes: int = _alias(
        "MAX_BODY_BYTES",
        1_048_576,
        ge=1024,
        description="larger request bodies are refused with 413 (a batch of 1000 calls is "
        "about 150 KB)",
    )
    shutdown_grace_seconds: int = _alias(
        "SHUTDOWN_GRACE_SECONDS",
        20,
        ge=1,
        description="on SIGTERM, how long requests in flight get to be answered",
    )

    _split = field_validator("api_keys", "trusted_proxies", mode="before")(_split_csv)

    @property
    def production(self) -> bool:
        return self.env == "production"


class LogSettings(Group):
    model_config = SettingsConfigDict(env_prefix="LOG_")
    title = "Logs"

    format: Literal["json", "text"] | None = Field(
        None,
        description="`json`: one JSON object per line, for a log aggregator (the default in "
        "production); `text`: for people (the default otherwise)",
    )
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="`DEBUG`, `INFO`, `WARNING` or `ERROR`"
    )


class DatabaseSettings(Group):
    model_config = SettingsConfigDict(env_prefix="DATABASE_")
    title = "The database"

    url: str | None = Field(
        None,
        description="`postgresql+asyncpg://user@host/db`: any PostgreSQL server. Unset: the "
        "embedded server, its data in `./pgdata` (docs/database.md)",
    )
    pgbouncer: bool = Field(
        False,
        description="`true` when PostgreSQL is reached through PgBouncer in transaction pooling "
        "(no statement caches)",
    )

    _unset = field_validator("url", mode="before")(_empty_is_unset)

    @field_validator("url")
    @classmethod
    def _asyncpg_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            url = make_url(value)
        except (ArgumentError, ValueError):  # whose messages hold the URL, password and all
            url = None
        if url is None or url.drivername != "postgresql+asyncpg" or not 0 < (url.port or 1) < 65536:
            raise ValueError("must be a URL postgresql+asyncpg://user:password@host:port/database")
        return value


class ExotelSettings(Group):
    model_config = SettingsConfigDict(env_prefix="EXOTEL_")
    title = "Exotel"

    account_sid: str | None = Field(None, description="the account; unset: the simulator's")
    api_key: SecretStr | None = Field(
        None, description="unset: the built-in simulator serves, and nobody is phoned"
    )
    api_token: SecretStr | None = Field(None, description="the key's token")
    region: Literal["singapore", "mumbai"] = Field(
        "singapore",
        description="`singapore` → `https://api.exotel.com`, `mumbai` → "
        "`https://api.in.exotel.com`",
    )
    api_base_url: str | None = Field(
        None, description="another host, overriding the region's: a simulator, a proxy"
    )
    caller_id: str | None = Field(
        None, description="the ExoPhone (`CallerId`) used when a request names none"
    )
    flow_url_template: str = Field(
        "http://my.exotel.com/{account_sid}/exoml/start_voice/{app_id}",
        description="how `app_id` becomes Exotel's `Url`",
    )
    rate_limit: int = Field(
        200,
        ge=1,
        description="requests per window: the account's budget, shared by every replica (the "
        "simulator enforces it too)",
    )
    rate_window_seconds: float = Field(60, gt=0, description="the budget's window")
    rate_margin_seconds: float = Field(
        1.0,
        gt=0,
        description="added to the window, for the time between a grant and Exotel seeing the "
        "request (1 s costs 1.6% of a 60 s window); a request not sent within half of it is "
        "not sent on that grant",
    )
    timeout_seconds: float = Field(30, gt=0, description="read timeout of one Exotel request")
    status_callback_events: list[Literal["terminal", "answered"]] = Field(
        [],
        description="`terminal,answered` to ask for those events (off by default: some accounts "
        "answer 400 to it)",
    )
    status_callback_content_type: Literal["multipart/form-data", "application/json"] = Field(
        "multipart/form-data", description="how Exotel is asked to send status callbacks"
    )

    _split = field_validator("status_callback_events", mode="before")(_split_csv)
    _unset = field_validator(
        "account_sid", "api_key", "api_token", "api_base_url", "caller_id", mode="before"
    )(_empty_is_unset)

    _url = field_validator("api_base_url")(_http_url)

    @property
    def simulated(self) -> bool:
        return self.api_key is None

    @property
    def base_url(self) -> str:
        return self.api_base_url or REGION_HOSTS[self.region]

    @property
    def credentials(self) -> tuple[str, str]:
        """The API key and token exocall sends: the simulator's without EXOTEL_API_KEY."""
        if self.api_key is None:
            return SIMULATOR_API_KEY, SIMULATOR_API_TOKEN
        token = self.api_token.get_secret_value() if self.api_token else ""
        return self.api_key.get_secret_value(), token

    @property
    def account(self) -> str:
        """The account SID in use: the simulator's without EXOTEL_ACCOUNT_SID."""
        return self.account_sid or SIMULATOR_ACCOUNT_SID


class CallbackSettings(Group):
    model_config = SettingsConfigDict(env_prefix="CALLBACK_")
    title = "Status callbacks and Passthru requests"

    public_base_url: str = _alias(
        "PUBLIC_BASE_URL",
        "http://127.0.0.1:8000",
        description="how Exotel reaches this service, an http(s) URL (in production https, "
        "on an address Exotel can reach); callback and Passthru URLs are built on it. Unset "
        "(not in production): where `exocall serve` listens "
        "(`exocall callback-url` and `passthru-url` take `--host`/`--port` as `serve` does)",
    )
    secrets: list[SecretStr] = Field(
        [],
        description="comma-separated; the first signs new callback URLs, every one is accepted "
        f"(rotation). In production, {MIN_SECRET_LENGTH} characters or more each; unset in "
        "development: a published development secret, with a warning",
    )
    allowed_ips: list[IPvAnyNetwork] = Field(
        [],
        description="comma-separated CIDRs callbacks may come from; empty: any (Exotel "
        "publishes no addresses: for deployments that know theirs)",
    )
    unmatched_retention_days: float = Field(
        1,
        gt=0,
        description="callbacks and Passthru requests that match no call are kept this long "
        "(Exotel's fields only), for the call that learns their SID later, then deleted. Longer "
        "than `DEFAULT_TIME_LIMIT_SECONDS` + `RECONCILE_GRACE_SECONDS` (refused otherwise): "
        "the SID of an `unknown` call can take that long to be found",
    )
    writers: int = Field(
        3,
        ge=1,
        description="transactions storing status callbacks at once, each committing a batch "
        "(group commit)",
    )
    spool_dir: Path = _alias(
        "SPOOL_DIR",
        Path("./spool"),
        description="where callbacks wait while the database is unreachable (a volume in Docker)",
    )
    spool_replay_seconds: float = _alias(
        "SPOOL_REPLAY_SECONDS",
        2,
        gt=0,
        description="how often the spool is replayed while it is not empty",
    )
    passthru_redirect_digits: dict[str, list[str]] = _alias(
        "PASSTHRU_REDIRECT_DIGITS",
        {},
        description="JSON: per Exotel app id, the digits a Passthru request is answered `302` "
        'for (the applet\'s other branch), `{"926": ["2"]}`; every other one is answered `200`',
    )

    _split = field_validator("secrets", "allowed_ips", mode="before")(_split_csv)
    passthru_opt_out_digits: dict[str, list[str]] = _alias(
        "PASSTHRU_OPT_OUT_DIGITS",
        {},
        description="JSON: per Exotel app id, the digits a customer keys in the flow (read by "
        'its Passthru) to be put on the opt-out list, `{"926": ["9"]}`: no call to their '
        "number is dialled after, retries included",
    )

    _decode = field_validator("passthru_redirect_digits", "passthru_opt_out_digits", mode="before")(
        _json
    )
    _url = field_validator("public_base_url")(_http_url)
    _writable = field_validator("spool_dir")(_writable_directory)

    @cached_property  # read on every status callback
    def signing_secrets(self) -> list[bytes]:
        """The secrets as bytes; the first signs, all verify."""
        if self.secrets:
            return [secret.get_secret_value().encode() for secret in self.secrets]
        return [DEVELOPMENT_CALLBACK_SECRET.encode()]


class JobSettings(Group):
    model_config = SettingsConfigDict(env_prefix="JOBS_")
    title = "Work done later"

    poll_seconds: float = Field(
        0.5,
        gt=0,
        description="how often an idle kind of work (dispatch, delivery, the archive) looks for "
        "work other processes queued; calls queued here, and the events of calls this process "
        "dispatches or takes callbacks for, are taken at once",
    )
    beat_seconds: float = Field(
        5, gt=0, description="how often each process says it lives (docs/jobs.md)"
    )
    lease_seconds: float = Field(
        15,
        gt=0,
        description="a claim whose process has not said it lives for this long is taken by "
        "another as lost: a shorter lease takes a killed replica's work sooner, and also that "
        "of a live one stalled for as long. More than twice the beat",
    )

    @field_validator("lease_seconds")
    @classmethod
    def _lease_outlasts_beats(cls, lease: float, info: ValidationInfo) -> float:
        # A process stops claiming once half its lease has passed since its last beat: a lease
        # of two beats or less would stop it between two beats of a healthy heart.
        if lease <= 2 * info.data.get("beat_seconds", 0):
            raise ValueError("must be more than twice JOBS_BEAT_SECONDS")
        return lease


class DispatchSettings(Group):
    model_config = SettingsConfigDict(env_prefix="DISPATCH_")
    title = "Placing calls"

    wait_seconds: float = Field(
        10, ge=0, description="how long `POST /calls` waits for Exotel before answering 202"
    )
    concurrency: int = Field(16, ge=1, description="`Calls/connect` requests in flight per replica")
    max_attempts: int = Field(
        8, ge=1, description="connection failures before a call is `rejected`"
    )
    calling_window: Window | None = _alias(
        "CALLING_WINDOW",
        None,
        description="the hours calls are dialled in, for calls that name no `window` of their "
        "own: `09:00-21:00`, in Asia/Kolkata unless a time zone follows "
        "(`09:00-21:00 Asia/Dubai`). Unset: any hour (transactional calls have no time "
        "restriction in India). An attempt due outside it waits for its next opening",
    )
    number_attempt_limit: NumberLimit | None = _alias(
        "NUMBER_ATTEMPT_LIMIT",
        None,
        description="at most this many `Calls/connect` requests to one number in any such "
        "period, across every call and replica: `3/24h` (units s, m, h, d). An attempt over it "
        "waits (`scheduled`) for the first moment it allows; it is never refused for it. Unset: "
        "no limit",
    )

    @field_validator("calling_window", mode="before")
    @classmethod
    def _window(cls, value: object) -> object:
        return Window.parse(value) if isinstance(value, str) and value.strip() else value or None

    @field_validator("number_attempt_limit", mode="before")
    @classmethod
    def _limit(cls, value: object) -> object:
        return (
            NumberLimit.parse(value) if isinstance(value, str) and value.strip() else value or None
        )


class ReconcileSettings(Group):
    model_config = SettingsConfigDict(env_prefix="RECONCILE_")
    title = "Reconciliation"

    interval_seconds: float = Field(30, gt=0, description="how often reconciliation runs")
    first_lookup_seconds: float = Field(
        60,
        ge=0,
        description="a call Exotel accepted is first looked up this long after, if no callback "
        "ended it",
    )
    recheck_seconds: float = Field(
        180,
        ge=0,
        description="the longest wait between two look-ups of a call not yet over (the wait is "
        "half the call's age, from the first)",
    )
    grace_seconds: float = Field(
        120,
        ge=0,
        description="an `unknown` call Exotel lists nothing for this long after its `time_out "
        "+ time_limit` was never dialled",
    )
    price_delay_seconds: float = Field(
        300,
        ge=0,
        description="Exotel fills in a call's `Price` about five minutes after it ends: an "
        "attempt's price is first looked up this long after it ended, then again after half its "
        "age, never sooner than this",
    )
    price_give_up_seconds: float = Field(
        86400,
        gt=0,
        description="an attempt whose price Exotel has not filled in this long after it ended is "
        "not looked up again (about 15 look-ups, one per 100 attempts, with the default delay)",
    )
    default_time_limit_seconds: int = _alias(
        "DEFAULT_TIME_LIMIT_SECONDS",
        14400,
        ge=1,
        description="the time limit assumed for calls that give none (Exotel's maximum, 4 h)",
    )


class WebhookSettings(Group):
    model_config = SettingsConfigDict(env_prefix="WEBHOOK_")
    title = "Events and webhooks"

    event_retention_days: float = _alias(
        "EVENT_RETENTION_DAYS",
        90,
        gt=0,
        description="events (and their deliveries) older than this are deleted",
    )
    allowed_targets: list[WebhookTarget] | None = Field(
        None,
        description="comma-separated CIDRs, addresses and host names (`*.internal`: every name "
        "under it) webhook endpoints may be at, each on any port or on the one it names "
        "(`10.0.0.5:8443`, `[fd00::5]:8443`, `hooks.internal:443`). A name reaches public "
        "addresses only; loopback, private and link-local ones need a CIDR or address entry "
        "(docs/events.md). Unset: loopback and private ranges in development, nothing in "
        "production",
    )
    timeout_seconds: float = Field(
        15, gt=0, description="the longest one delivery attempt may take"
    )
    retry_schedule: list[float] = Field(
        [5, 300, 1800, 7200, 18000, 36000, 36000],
        description="seconds between an event's attempts, after the first, each ±20% (Svix's "
        "schedule, about 27.6 h)",
    )
    disable_after_seconds: float = Field(
        432000, gt=0, description="an endpoint failing without a success this long is disabled"
    )
    secret_overlap_seconds: float = Field(
        86400, ge=0, description="after a rotation, how long the old secret signs beside the new"
    )
    concurrency: int = Field(64, ge=1, description="deliveries in flight per replica")
    endpoint_concurrency: int = Field(
        16,
        ge=1,
        description="deliveries in flight to one endpoint, across replicas: a slow one holds "
        "back no other",
    )
    delivery_in_serve: bool = Field(
        True,
        description="`false`: `exocall serve` sends no webhooks; `exocall deliver` processes "
        "beside it do",
    )

    _split = field_validator("retry_schedule", mode="before")(_split_csv)
    _targets = field_validator("allowed_targets", mode="before")(_webhook_targets)

    @field_validator("retry_schedule")
    @classmethod
    def _positive_delays(cls, value: list[float]) -> list[float]:
        if not value or any(delay <= 0 for delay in value):
            raise ValueError("give one or more positive delays in seconds")
        return value


class RecordingSettings(Group):
    model_config = SettingsConfigDict(env_prefix="RECORDING_")
    title = "Recordings"

    store: str = Field(
        "./recordings",
        description="where recordings are kept: a directory, or `s3://bucket/prefix` "
        "(docs/recordings.md)",
    )
    s3_endpoint: str | None = Field(
        None, description="an S3-compatible store's endpoint; unset: AWS"
    )
    s3_region: str = Field("ap-south-1", description="the S3 store's region")
    s3_access_key_id: str | None = Field(
        None, description="the bucket's key; unset: `AWS_*` variables, instance roles"
    )
    s3_secret_access_key: SecretStr | None = Field(None, description="the key's secret")
    serve: Literal["stream", "redirect"] = Field(
        "stream",
        description="`redirect`: `GET /calls/{id}/recording` answers `307` to a URL an S3 store "
        "signs (a directory is always streamed)",
    )
    presign_seconds: int = Field(300, ge=1, le=604800, description="how long a signed URL serves")
    url_hosts: list[str] = Field(
        [
            "*.exotel.com",
            "*.exotel.in",
            "s3-ap-southeast-1.amazonaws.com/exotelrecordings/",  # where Exotel keeps them
        ],
        description="where recordings are fetched with the Exotel credentials, over HTTPS "
        "(hosts, `*.` for subdomains, each maybe with a path prefix); the API's own origin "
        "always is; any other URL fails unfetched",
    )
    retention_days: float | None = Field(
        None,
        gt=0,
        description="archived audio older than this is deleted; the call keeps the fact. "
        "Unset: kept",
    )
    archive: bool = Field(True, description="`false`: this replica fetches no recordings")
    concurrency: int = Field(2, ge=1, description="recordings fetched at once per replica")
    max_attempts: int = Field(
        8,
        ge=1,
        description="fetches that failed (5xx, timeouts, bodies cut short) before a recording "
        "is `failed`, counted from when it was queued (a backfill queues it afresh)",
    )
    auth_pause_seconds: float = Field(
        600,
        gt=0,
        description="after Exotel refuses the credentials (401/403), how long nothing is fetched",
    )

    _split = field_validator("url_hosts", mode="before")(_split_csv)
    _unset = field_validator(
        "s3_endpoint", "s3_access_key_id", "s3_secret_access_key", mode="before"
    )(_empty_is_unset)

    @field_validator("store")
    @classmethod
    def _writable_store(cls, value: str) -> str:
        if not value.startswith("s3://"):
            _writable_directory(Path(value))
        return value


class SimulatorSettings(Group):
    model_config = SettingsConfigDict(env_prefix="SIMULATOR_")
    title = "The built-in simulator (without EXOTEL_API_KEY)"

    callback_delay_seconds: float = Field(
        2.0, ge=0, description="the delay before the simulator's status callback"
    )
    flows: dict[str, list[SimulatedApplet]] = Field(
        {"927": ["play", "gather", "passthru", "hangup"]},
        description="JSON: the flow the simulator runs, per app id (docs/simulator.md)",
    )
    outcomes: dict[str, Annotated[list[SimulatedOutcome], Field(min_length=1)]] = Field(
        {},
        description="JSON: per number (any spelling), what its next `Calls/connect` requests "
        "do in turn, before the last digit decides again: "
        '`{"+919052161112": ["busy", "busy", "completed"]}`, among `completed`, `busy`, '
        "`no-answer`, `failed`, `dnd`, `invalid`, `timeout` (docs/simulator.md)",
    )
    price_delay_seconds: float = Field(
        20.0,
        ge=0,
        description="how long after a call ends the simulator's call details carry its `Price` "
        "(null until then); real Exotel takes about five minutes",
    )

    _decode = field_validator("flows", "outcomes", mode="before")(_json)
    _numbers = field_validator("outcomes")(_phone_numbers)


class Settings(BaseModel):
    """Every group. `Settings.load()` reads them."""

    model_config = ConfigDict(frozen=True)

    service: ServiceSettings
    logs: LogSettings
    database: DatabaseSettings
    exotel: ExotelSettings
    callbacks: CallbackSettings
    jobs: JobSettings
    dispatch: DispatchSettings
    reconcile: ReconcileSettings
    webhooks: WebhookSettings
    recordings: RecordingSettings
    simulator: SimulatorSettings

    @classmethod
    def groups(cls) -> Iterator[tuple[str, type[Group]]]:
        for name, field in cls.model_fields.items():
            group = field.annotation
            assert isinstance(group, type)
            assert issubclass(group, Group)
            yield name, group

    @classmethod
    def load(cls, env_file: str | None = ".env", **values: Any) -> Settings:
        """The settings from the environment and `env_file`, with `values` (by variable:
        `DISPATCH_WAIT_SECONDS=2`) over both. Raises ConfigurationError."""
        values = {name.upper(): value for name, value in values.items()}
        problems: list[tuple[str, str]] = []
        groups: dict[str, Group] = {}
        for name, group in cls.groups():
            try:
                groups[name] = group.load(env_file, values)
            except ConfigurationError as exc:
                problems += exc.problems
        if values:
            raise TypeError(f"no such settings: {', '.join(values)}")
        if problems:
            raise ConfigurationError(problems)
        settings = cls.model_validate(groups)
        if problems := list(settings._problems_across_groups()):
            raise ConfigurationError(problems)
        settings.check_production()
        return settings

    def _problems_across_groups(self) -> Iterator[tuple[str, str]]:
        # An `unknown` call's SID can take its time limit and the grace after it to be found;
        # what came for it before then must still be there.
        longest = self.reconcile.default_time_limit_seconds + self.reconcile.grace_seconds
        if self.callbacks.unmatched_retention_days * 86400 <= longest:
            yield (
                "CALLBACK_UNMATCHED_RETENTION_DAYS",
                "must be longer than DEFAULT_TIME_LIMIT_SECONDS + RECONCILE_GRACE_SECONDS",
            )

    def check_production(self) -> None:
        """Refuse, naming every problem, what production must not run with."""
        if self.service.production and (problems := list(self._production_problems())):
            raise ConfigurationError(problems)

    def _production_problems(self) -> Iterator[tuple[str, str]]:
        required = {
            "API_KEYS": self.service.api_keys,
            "CALLBACK_SECRETS": self.callbacks.secrets,
            "EXOTEL_ACCOUNT_SID": self.exotel.account_sid,
            "EXOTEL_API_KEY": self.exotel.api_key,
            "EXOTEL_API_TOKEN": self.exotel.api_token,
        }
        if missing := [name for name, value in required.items() if not value]:
            yield "EXOCALL_ENV", f"production requires {', '.join(missing)}"
        if "public_base_url" not in self.callbacks.model_fields_set:
            yield (
                "PUBLIC_BASE_URL",
                "production requires it: Exotel can never reach the default, on 127.0.0.1",
            )
        elif not self.callbacks.public_base_url.startswith("https://"):
            yield "PUBLIC_BASE_URL", "production requires https: callback tokens are in its URLs"
        elif not _reachable_from_outside(self.callbacks.public_base_url):
            yield "PUBLIC_BASE_URL", "production requires an address Exotel can reach"
        secrets = {"API_KEYS": self.service.api_keys, "CALLBACK_SECRETS": self.callbacks.secrets}
        for variable, values in secrets.items():
            if any(len(value.get_secret_value()) < MIN_SECRET_LENGTH for value in values):
                yield (
                    variable,
                    f"production requires each to be {MIN_SECRET_LENGTH} characters or more",
                )
        if any(s.get_secret_value() == DEVELOPMENT_CALLBACK_SECRET for s in self.callbacks.secrets):
            yield (
                "CALLBACK_SECRETS",
                "the development secret is published: production needs its own",
            )
        if not self.exotel.base_url.startswith("https://"):
            yield "EXOTEL_API_BASE_URL", "production reaches Exotel over https only"

    def replace(self, **values: Any) -> Settings:
        """These settings with `values` (by variable) changed, and nothing read again."""
        values = {name.upper(): value for name, value in values.items()}
        groups: dict[str, Group] = {}
        for name, group in self.groups():
            current: Group = getattr(self, name)
            if any(variable in values for variable in group.variables().values()):
                # Every field given: nothing read from the environment again.
                kept = {v: getattr(current, f) for f, v in group.variables().items()}
                current = group.load(
                    None, kept | {v: values.pop(v) for v in list(values) if v in kept}
                )
            groups[name] = current
        if values:
            raise TypeError(f"no such settings: {', '.join(values)}")
        return self.model_copy(update=groups)

    @property
    def logs_as(self) -> Literal["json", "text"]:
        if self.logs.format:
            return self.logs.format
        return "json" if self.service.production else "text"


def variables() -> list[str]:
    """Every variable the settings read."""
    return [v for _, group in Settings.groups() for v in group.variables().values()]


def default(variable: str) -> Any:
    """The default of `variable`."""
    for _, group in Settings.groups():
        for name, known in group.variables().items():
            if known == variable:
                return group.model_fields[name].default
    raise KeyError(variable)


def reference() -> str:
    """The settings as Markdown tables, one per group: docs/configuration.md's reference."""
    lines: list[str] = []
    for _, group in Settings.groups():
        lines += ["", f"### {group.title}", "", "| variable | default | meaning |", "|---|---|---|"]
        for name, variable in group.variables().items():
            field = group.model_fields[name]
            lines.append(f"| `{variable}` | {_default(field.default)} | {field.description} |")
    return "\n".join(lines[1:]) + "\n"


def _default(value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list):
        return f"`{','.join(_number(item) for item in value)}`" if value else "empty"
    if isinstance(value, dict):
        return f"`{json.dumps(value)}`"
    return f"`{_number(value)}`"


def _number(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


BEGIN, END = "<!-- settings: made by `python -m app.config` -->", "<!-- end of settings -->"


def with_reference(document: str) -> str:
    """`document` with the reference between its markers made anew."""
    head, _, rest = document.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{reference()}{END}{tail}"


if __name__ == "__main__":
    # python -m app.config docs/configuration.md: the reference there made anew.
    path = Path(sys.argv[1])
    path.write_text(with_reference(path.read_text()))
