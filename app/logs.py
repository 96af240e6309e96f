"""Logging set-up. Whatever is logged passes a redacting filter, tracebacks and the request id
included, so that nothing personal or secret reaches the log even when a library logs a URL:

- phone numbers (personal data) are masked but for their first and last four digits, in
  every spelling the API takes (`090-5216-1110`, `+91 90521 61110`, `%2B91%2090521%2061110`,
  `(0)9052161110`, ...); call ids, Exotel SIDs, times, addresses and decimals are left whole,
  so that logs can be searched by them;
- the value of any parameter named as a credential (`token`, `api_key`, `X-Amz-Signature`, ...)
  is redacted, in query strings, form bodies and JSON, and so are `Authorization` headers and
  the user and password of a URL (`https://key:token@host`);
- so is a webhook endpoint's secret (`whsec_...`) wherever it turns up;
- SQL parameters are hidden by the engine itself (`app.db.session`); the filter hides any that
  slip through, and what the driver's and PostgreSQL's errors repeat of the values refused.

Lines are JSON objects, one event per line, for log aggregators (`LOG_FORMAT=json`, the default
in production), or plain text for people (the default in development). Each carries the id of
the request it was logged under, and the `call_id` and `sid` it is about when there is one.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import unquote

from app.numerals import MOST_SEPARATORS_IN_A_ROW, NUMBER_SEPARATORS

REDACTED = "[redacted]"

# --- Phone numbers ------------------------------------------------------------------------
# What people and URL encoders put between a number's digits (app.calls.phone ignores the
# ASCII ones): spaces (any, and `+` or `%20` in a query string), dashes, dots, brackets, and
# their escapes (`%2D`, `%2E`, `%28`, `%29`).
_GAP = rf"(?:[^\S\r\n]|[{re.escape(NUMBER_SEPARATORS)}+]|%2[089DdEe])"
_HEX = "[0-9a-fA-F]"
_UUID_HEAD = rf"{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-"
_PHONE = re.compile(
    rf"""
    (?=[\d+%])  # a quick first test: the rest is tried only where a number could start
    # Where a value starts: not inside a word, a masked number, a decimal's fraction or a
    # UUID's last segment; after an escape (`%3D`) or a `_` (`order_09052161110`) it may.
    (?:(?<=%{_HEX}{{2}})|(?<![^\W_]|[%+*])(?<!\w\.)(?<!{_UUID_HEAD}))
    (?P<plus>\+|%2[Bb])?
    \d(?:{_GAP}{{0,{MOST_SEPARATORS_IN_A_ROW}}}\d){{7,14}}  # 8 to 15 digits (E.164's most)
    # Nor going on: into a word, a UUID's next segment, a decimal's fraction or a time.
    (?!\w|-\w|[.:]\d|%3[Aa])
    """,
    re.VERBOSE,
)
_ESCAPE = re.compile(rf"(%{_HEX}{{2}})")
# Runs of digits that are not numbers: a decimal whose whole part is too short or too long for
# a group of a number (a duration of `0.123456789012` s, an epoch time; `90521.61110` is a
# number), an IPv4 address, a date and what follows it.
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_NOT_A_NUMBER = re.compile(
    rf"(?:\d{{1,2}}|\d{{10,}})\.\d+|{_OCTET}(?:\.{_OCTET}){{3}}"
    r"|(?:19|20)\d\d-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])(?:\D.*)?"
)


def mask(number: str | None) -> str:
    """`+919052161119` -> `+91******1119`: numbers are personal data."""
    if not number:
        return ""
    keep_head = 3 if number.startswith("+") else 1
    if len(number) <= keep_head + 4:
        return "*" * len(number)
    return number[:keep_head] + "*" * (len(number) - keep_head - 4) + number[-4:]


def _masked_number(match: re.Match[str]) -> str:
    """The number as spelled, every digit starred but the first (the first two after a `+`:
    India's country code) and the last four; a run of digits that is no number, unchanged."""
    plus, spelled = match["plus"] or "", match[0].removeprefix(match["plus"] or "")
    parts = _ESCAPE.split(spelled)  # escapes at odd indexes: their digits are not the number's
    digits = sum(char.isdecimal() for part in parts[::2] for char in part)
    if digits < (8 if plus else 10) or (not plus and _NOT_A_NUMBER.fullmatch(spelled)):
        return match[0]
    keep_head, seen, masked = (2 if plus else 1), 0, [plus]
    for index, part in enumerate(parts):
        if index % 2:
            masked.append(part)
            continue
        for char in part:
            if char.isdecimal():
                seen += 1
                char = char if seen <= keep_head or seen > digits - 4 else "*"
            masked.append(char)
    return "".join(masked)


# --- Credentials --------------------------------------------------------------------------
# A parameter is a credential when a word of its name is one of these, or ends with one of
# those (`token`, `api_key`, `apiKey`, `APIKEY`, `access_token`, `client_secret`, `sig`,
# `X-Amz-Signature`, `AWSAccessKeyId`; plurals too): its name is all a log line tells of a
# parameter, and redacting a harmless one (`monkey`) costs little.
_CREDENTIAL_WORDS = frozenset({"auth", "authorization", "jwt", "pass", "passphrase", "pwd", "sig"})
_CREDENTIAL_ENDINGS = ("credential", "key", "passwd", "password", "secret", "signature", "token")
# What any of them holds: a line without any has no credential to redact.
_CREDENTIAL_PARTS = ("auth", "credential", "jwt", "key", "pass", "pwd", "secret", "sig", "token")
_NAME_WORDS = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
# A parameter's name; its `_`, `-` and `.` maybe escaped (`api%5Fkey`).
_NAME = r"[a-z](?:[\w.-]|%5[fF]|%2[dDeE])*"
# `name=value` in a query string or a form body, or in a URL escaped in another (`%3D`).
_PARAMETER = re.compile(
    rf"""(?:^|(?<=[?&;\s"'(,\[{{])|(?<=%2[06]|%3[fF]))(?P<name>{_NAME})(?P<equals>=|%3D)"""
    r"""(?P<value>(?:(?!%2[02367]|%3B)[^&\s"'#;<>()\[\]{}])+)""",
    re.IGNORECASE,
)
# Where a parameter's value ends, unescaped.
_VALUE_END = re.compile(r"""[&\s"'#;<>()\[\]{}]""")
# `"name": "value"` in JSON or a Python repr (`(b'name', b'value')` too).
_QUOTED = re.compile(
    rf"""(?P<quote>["'])(?P<name>{_NAME})(?P=quote)(?P<colon>\s*[:,]\s*b?)"""
    r"""(?P<open>["'])(?P<value>(?:\\.|(?!(?P=open))[^\\\n])*)(?P=open)""",
    re.IGNORECASE,
)
_AUTHORIZATION = re.compile(
    r"\b((?:proxy-)?authorization:\s*(?:(?:basic|bearer|digest|negotiate|token)\s+)?)"
    r"""[^\s"',;]+""",
    re.IGNORECASE,
)
_BEARER = re.compile(r"\b(bearer\s+)(?!\[redacted\])[\w.~+/=-]+", re.IGNORECASE)
# `https://key:token@host`: a user name can be a credential too (Exotel's API key is one).
_USERINFO = re.compile(r"""\b([a-z][a-z\d+.-]*://)[^\s/?#@"'<>]+@""", re.IGNORECASE)
# The secrets exocall makes, wherever they turn up: a webhook endpoint's.
_OWN_SECRET = re.compile(r"\bwhsec_[A-Za-z0-9+/=]+")

# --- What database errors repeat of the values they were given --------------------------
# SQLAlchemy's parameters: the engines hide them (app.db.session); this is for any other.
_SQL_PARAMETERS = re.compile(r"\[parameters: [^\n]*")
# asyncpg's argument it could not encode, and PostgreSQL's row or key it refused.
_DRIVER_INPUT = re.compile(r"(invalid input for query argument [^:\n]*: )[^\n]*")
_ROW_VALUES = re.compile(r"(Failing row contains |Key \([^)\n]*\)=)\(.*\)")


@functools.lru_cache(maxsize=1024)  # the same few names, line after line
def _is_credential(name: str) -> bool:
    words = [word.lower() for word in _NAME_WORDS.findall(unquote(name))]
    return any(
        word in _CREDENTIAL_WORDS or word.endswith(_CREDENTIAL_ENDINGS)
        for word in words + [word.removesuffix("s") for word in words]
    )


def _redacted_value(match: re.Match[str]) -> str:
    if not _is_credential(match["name"]):
        return match[0]
    start, end = match.span("value")
    return match[0][: start - match.start()] + REDACTED + match[0][end - match.start() :]


def _redacted_parameters(text: str) -> str:
    """`text` with the value of each credential parameter redacted up to its real end: an
    escaped `&` (`%26`) ends a parameter of a URL escaped in another, but may be a secret's own."""
    kept, position = [], 0
    for match in _PARAMETER.finditer(text):
        if match.start() < position or not _is_credential(match["name"]):
            continue
        end = _VALUE_END.search(text, match.end())
        kept += [text[position : match.start("value")], REDACTED]
        position = end.start() if end else len(text)
    return "".join(kept) + text[position:]


def redact(text: str) -> str:
    """`text` with its credentials redacted and its phone numbers masked."""
    # Every line of the access log comes here: a rule is tried only where it could apply.
    lowered = text.lower()
    if "@" in text:
        text = _USERINFO.sub(rf"\1{REDACTED}@", text)
    if "bearer" in lowered:
        text = _BEARER.sub(rf"\1{REDACTED}", text)
    if any(word in lowered for word in _CREDENTIAL_PARTS):
        if "authorization" in lowered:
            text = _AUTHORIZATION.sub(rf"\1{REDACTED}", text)
        if "=" in text or "%3d" in lowered:
            text = _redacted_parameters(text)
        if any(quote in text for quote in ('":', '" :', "':", "',", '",')):
            text = _QUOTED.sub(_redacted_value, text)
    if "whsec_" in text:
        text = _OWN_SECRET.sub(f"whsec_{REDACTED}", text)
    if "[parameters: " in text:
        text = _SQL_PARAMETERS.sub(f"[parameters: {REDACTED}]", text)
    if "invalid input for query argument" in text:
        text = _DRIVER_INPUT.sub(rf"\1{REDACTED}", text)
    if "Failing row contains" in text or "Key (" in text:
        text = _ROW_VALUES.sub(rf"\1({REDACTED})", text)
    return _PHONE.sub(_masked_number, text)


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        if record.exc_info:
            # Tracebacks carry SQL and URLs too; formatters use this text. Another handler may
            # have formatted the record already, and cached its text unredacted.
            text = record.exc_text or _FORMATTER.formatException(record.exc_info)
            record.exc_text = redact(text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        # A caller's X-Request-ID is whatever it sent (`app.api.request_ids`).
        if isinstance(given := getattr(record, "request_id", None), str):
            record.request_id = _redacted_id(given)
        return True


_FORMATTER = logging.Formatter()
# A request's lines carry the same id.
_redacted_id = functools.lru_cache(maxsize=256)(redact)


# The id of the request being served, set by `app.api.request_ids.RequestIds`.
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

# What a line may say besides its message: `extra=about(call_id, sid)`.
_CONTEXT = ("request_id", "call_id", "sid")


def about(call_id: uuid.UUID | None, sid: str | None = None) -> dict[str, Any]:
    """`extra` for a log line about a call."""
    return {"call_id": str(call_id) if call_id else None, "sid": sid}


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry |= {name: value for name in _CONTEXT if (value := getattr(record, name, None))}
        if record.exc_info:
            entry["exception"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = " ".join(f"{n}={v}" for n in _CONTEXT if (v := getattr(record, n, None)))
        return f"{line} [{context}]" if context else line


def logging_config(*, format: Literal["json", "text"], level: str = "INFO") -> dict[str, Any]:
    """A `logging.config.dictConfig`: what every command and every uvicorn worker applies."""
    formatter = JsonFormatter if format == "json" else TextFormatter
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "context": {"()": f"{__name__}.{ContextFilter.__name__}"},
            "redact": {"()": f"{__name__}.{RedactingFilter.__name__}"},
        },
        "formatters": {"default": {"()": f"{__name__}.{formatter.__name__}"}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "default",
                "filters": ["context", "redact"],
            }
        },
        "root": {"level": level, "handlers": ["default"]},
        "loggers": {
            # httpx logs every request URL at INFO; our own logs say what matters.
            "httpx": {"level": "WARNING"},
            # SQLAlchemy would log every statement at INFO and every row at DEBUG (numbers,
            # webhook secrets): off whatever LOG_LEVEL says, not only by SQLAlchemy's default.
            "sqlalchemy.engine": {"level": "WARNING"},
        },
    }
