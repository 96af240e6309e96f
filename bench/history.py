"""A year of history, or any part of it: `python -m bench.history --calls N` fills the database
DATABASE_URL names (or `--database-url`) with N calls as one busy account makes them (about
12,000 an hour, ending now), and everything the service keeps of them: their dials, what Exotel
sent (receipts), the outbox's events, their deliveries to two endpoints, the recordings'
archive, batches and opt-outs. The newest calls are still live (queued, scheduled, in
progress), as on a running system. For finding the queries that slow down with size.

Every row is derived from the call's number in the series by cheap arithmetic, in SQL set
operations (`INSERT ... SELECT ... FROM generate_series`), a chunk of calls per transaction:
the same N gives the same rows (but for the times, which end at the database's now).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.config import RecordingSettings
from app.db import migrate
from app.db.session import create_engine

CALLS_AN_HOUR = 12_000  # one account, busy: the spacing of `created_at` (0.3 s)
CHUNK = 200_000
# The newest calls that are still live, at most.
LIVE = 3_000
# Filled in this order; the rest of the tables stay as the migrations leave them.
TABLES = (
    "batch",
    "call",
    "dial",
    "call_event",
    "event",
    "webhook_endpoint",
    "delivery",
    "delivery_attempt",
    "recording_job",
    "opt_out",
)
# Ids of `event`, `delivery` and `delivery_attempt` are derived (a call's events are
# `i * EVENT_SLOTS + sequence`), so that each statement knows its parents' without a look-up.
EVENT_SLOTS = 16
ENDPOINT_ALL = "5b0c1e7a-3f64-4c1e-9a51-0f3c5d2e8a01"  # takes every type
ENDPOINT_ENDS = "5b0c1e7a-3f64-4c1e-9a51-0f3c5d2e8a02"  # only the ends of calls Exotel placed
ENDED_TYPES = ("call.completed", "call.busy", "call.no_answer", "call.failed")
CALLER_ID = "08047180000"
ACCOUNT = "acme1"
# How full the history's calls fill their pages. `call` keeps a fifth of each page for the
# next versions of its calls (docs/database.md, "Room on a call's page"). On a server, once a
# page's calls have ended, VACUUM records the room they leave, and the next new calls take it,
# one to a page (each asks for its size and that fifth again), until no page of ended calls
# has room for another. Written at 80% and vacuumed at once, a history would offer a third of
# its pages to new calls, each to one of its own anywhere in the table, read from disk. At 87%
# no page has room for a new call (at most 1,064 bytes free and the last row that did not fit,
# some 800, against a queued call's 270 or so and 1,638): as far as those new calls leave them
# (bench/README.md, "New calls on the history's old pages").
CALL_FILLFACTOR = 87

# A recording whose fetches keep failing is `failed` once RECORDING_MAX_ATTEMPTS have: within
# about 12 minutes of its call's end (5 s doubling to 600 s). Only the recent ones still wait.
RECORDING_FETCHES = RecordingSettings.model_fields["max_attempts"].default


@dataclass(frozen=True)
class History:
    """What `fill` made: rows per table, how long it took, and each step's seconds."""

    rows: dict[str, int]
    seconds: float
    steps: dict[str, float]

    @property
    def calls_per_second(self) -> float:
        return self.rows["call"] / self.seconds if self.seconds else 0.0


def _utc(column: str) -> str:
    """As pydantic writes a UTC time (the call resource's)."""
    return f"""to_char(({column}) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""


def _iso(column: str) -> str:
    """As Python's `isoformat()` writes a UTC time (attempts, flows, events' timestamps)."""
    return f"""to_char(({column}) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')"""


def _ist(column: str) -> str:
    """As the call resource shows Exotel's clock."""
    return f"""to_char(({column}) AT TIME ZONE 'Asia/Kolkata', 'YYYY-MM-DD"T"HH24:MI:SS"+05:30"')"""


def _exotel(column: str) -> str:
    """As Exotel writes a time: IST, no zone."""
    return f"to_char(({column}) AT TIME ZONE 'Asia/Kolkata', 'YYYY-MM-DD HH24:MI:SS')"


def _hash(prime: int, offset: int) -> str:
    """0..999, evenly spread over the series: the top bits of `i * prime` modulo 2^31."""
    return f"((i * {prime} + {offset}) % 2147483648) / 2147484"


def _sid(n: str) -> str:
    """Attempt `n`'s SID: 32 characters, as Exotel's (hex, then two letters past `f`)."""
    return (
        f"left(md5(m || ':' || {n}), 30)"
        f" || substr('ghjkmnpqrstuvwxyz', 1 + ((r4 + {n}) % 17)::int, 1)"
        f" || substr('gm', 1 + ((r5 + {n}) % 2)::int, 1)"
    )


def _attempt_at(n: str) -> str:
    """When attempt `n` was sent: each follows the last by its retry interval and more."""
    return f"(d - (k - {n}) * interval '640 seconds')"


def _compact(json_text: str) -> str:
    """`json_build_object`'s text as Python's `separators=(",", ":")` writes it (no generated
    value holds these sequences)."""
    return (
        f"replace(replace(replace(replace({json_text}, '\" : ', '\":'), '\": ', '\":'),"
        " ', \"', ',\"'), ', {', ',{')"
    )


def _level(inner: str, alias: str, columns: str) -> str:
    """`inner`'s rows with more columns computed from them, once (`OFFSET 0` keeps the planner
    from copying each expression into every one that uses it)."""
    return f"SELECT {alias}.*, {columns}\nFROM ({inner}\nOFFSET 0) AS {alias}"


def _nothing_unless(condition: str, values: str) -> str:
    return f"(CASE WHEN {condition} THEN ARRAY[{values}] ELSE '{{}}' END)"


def _v7(at: str, tail: str) -> str:
    """A version-7 UUID's 32 hex digits, as `app.ids` makes them: the milliseconds of `at`,
    then 19 of `tail`'s (hex) with the version and variant between."""
    millis = f"lpad(to_hex((extract(epoch FROM {at}) * 1000)::bigint), 12, '0')"
    return f"({millis} || '7' || substr({tail}, 1, 3) || 'a' || substr({tail}, 4, 15))"


_SERIES = f"""
SELECT i, p.t0, p.n,
  p.t0 - (p.n - i) * interval '300 ms' AS created,
  p.n - 1 - i < p.live AS live,
  {_hash(506952113, 11)} AS r0, {_hash(1597334677, 23)} AS r1,
  {_hash(1103515245, 37)} AS r2, {_hash(1181783497, 41)} AS r3,
  {_hash(1812433253, 53)} AS r4, {_hash(695872465, 67)} AS r5,
  md5('exocall-history:' || i) AS m
FROM (SELECT CAST(:t0 AS timestamptz) AS t0, CAST(:n AS bigint) AS n,
             CAST(:live AS bigint) AS live) AS p,
     generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint) - 1) AS i"""

# Live calls: queued, in progress (dialled over 2 s ago), scheduled. Ended ones: mostly
# completed; no-answer, busy, failed; refused; a few canceled, unknown, expired. `unknown` only
# in the last hour: reconciliation resolves an older one (an `expired` stands in for it).
_STATUS = """
CASE WHEN live THEN
    CASE WHEN r0 < 400 OR (r0 < 800 AND created > t0 - interval '2 seconds') THEN 'queued'
      WHEN r0 < 800 THEN 'in-progress' ELSE 'scheduled' END
  WHEN r0 < 690 THEN 'completed' WHEN r0 < 810 THEN 'no-answer' WHEN r0 < 890 THEN 'busy'
  WHEN r0 < 950 THEN 'failed' WHEN r0 < 980 THEN 'rejected' WHEN r0 < 990 THEN 'canceled'
  WHEN r0 < 995 AND created >= t0 - interval '1 hour' THEN 'unknown' ELSE 'expired' END
  AS status"""

_KINDS = """
status IN ('completed', 'no-answer', 'busy', 'failed', 'in-progress') AS accepted,
status IN ('completed', 'no-answer', 'busy', 'failed') AND r1 < 100
  AND created < t0 - interval '30 minutes' AS retried,
status IN ('completed', 'failed') AND r1 >= 100 AND r1 < 250 AS with_policy"""

# k: the attempts made. A rejected call was refused by Exotel (one attempt), or never dialled
# for its number's opt-out (none).
_ATTEMPTS = """
CASE WHEN retried THEN 2 + r1 % 2
  WHEN accepted OR status = 'unknown' OR (status = 'rejected' AND r5 >= 150) THEN 1
  ELSE 0 END AS k,
-- The number's: most are called once; a fifth of the calls share a hundredth as many numbers.
CASE WHEN r4 < 800 THEN i ELSE 900000000 + (i * 1103515245) % greatest(n / 100, 10) END AS j"""

_LIFE = f"""
{_v7("created", "m")}::uuid AS id,
created + (200 + r2 % 300) * interval '1 ms' + (greatest(k, 1) - 1) * interval '640 seconds'
  AS d,
3 + r2 % 25 AS ring,
CASE WHEN status = 'completed' THEN 15 + (r2 * 7) % 280 ELSE 0 END AS talk_seconds,
CASE status WHEN 'completed' THEN 3 + r2 % 25 + 15 + (r2 * 7) % 280
  WHEN 'busy' THEN 2 + r2 % 6 WHEN 'no-answer' THEN 30 + r2 % 15 WHEN 'failed' THEN 0 END
  AS dur,
status = 'completed' OR (status = 'in-progress' AND r2 % 2 = 0
  AND created + (5 + r2 % 25) * interval '1 second' < t0) AS answered,
status = 'completed' AND r3 < 145 AS passthru,
status = 'completed' AND r3 % 2 = 0 AS recorded,
CASE (i + 1) % 2 WHEN 0 THEN 'busy' ELSE 'no-answer' END AS early_status_1,
CASE i % 2 WHEN 0 THEN 'busy' ELSE 'no-answer' END AS early_status_2,
CASE (i + 1) % 2 WHEN 0 THEN 3 ELSE 32 END AS early_seconds_1,
CASE i % 2 WHEN 0 THEN 3 ELSE 32 END AS early_seconds_2,
CASE WHEN status = 'canceled' THEN created + (20 + r2 % 600) * interval '1 second' END
  AS canceled_at,
CASE WHEN status = 'expired' THEN created + interval '15 minutes'
  WHEN status = 'scheduled' AND r1 % 3 = 0 THEN t0 + interval '1 day' END AS expires_at,
'+91' || (6 + j % 4) || lpad(((j * 7919 + 1234567) % 1000000000)::text, 9, '0') AS number,
CASE WHEN r4 % 20 < 14 THEN '926' WHEN r4 % 20 < 18 THEN '1032' ELSE '417' END AS app_id,
CASE WHEN r4 % 10 < 6 THEN 'order-' || i END AS custom_field,
CASE WHEN r3 % 7 = 0 THEN 600 END AS time_limit,
CASE WHEN r3 % 5 = 1 THEN 40 END AS time_out,
CASE WHEN r5 % 10 = 3 THEN 'idem-' || substr(m, 1, 24) END AS idempotency_key,
CASE WHEN i / 5000 % 3 = 1 AND i % 5000 < 300 + (i / 5000 * 7919) % 2700
  THEN md5('exocall-history-batch:' || i / 5000)::uuid END AS batch_id"""

_ENDS = """
CASE WHEN dur > 0 THEN 0.6 * ceil(dur / 60.0) ELSE 0 END AS last_price,
CASE WHEN status IN ('completed', 'no-answer', 'busy', 'failed')
  THEN d + (dur + 1) * interval '1 second' END AS ended,
CASE WHEN answered THEN d + ring * interval '1 second' END AS answered_at"""

_SIDS = f"""
CASE WHEN k >= 1 AND (k > 1 OR accepted) THEN {_sid("1")} END AS sid_1,
CASE WHEN k >= 2 AND (k > 2 OR accepted) THEN {_sid("2")} END AS sid_2,
CASE WHEN k >= 3 AND accepted THEN {_sid("3")} END AS sid_3"""

_FACTS = f"""
CASE k WHEN 1 THEN sid_1 WHEN 2 THEN sid_2 WHEN 3 THEN sid_3 END AS sid,
CASE WHEN accepted THEN d END AS dispatched_at,
CASE WHEN ended IS NOT NULL THEN ended + interval '2 seconds'
  WHEN status = 'rejected' AND k = 1 THEN d + interval '300 ms'
  WHEN status = 'rejected' THEN created + interval '200 ms'
  WHEN status = 'unknown' THEN d + interval '10 seconds'
  WHEN status = 'canceled' THEN canceled_at
  WHEN status = 'expired' THEN expires_at END AS final_at,
CASE WHEN status = 'rejected' AND k = 0 THEN 'number_opted_out'
  WHEN status = 'rejected' THEN 'exotel_rejected'
  WHEN status = 'unknown' THEN 'exotel_outcome_unknown' END AS error_code,
CASE WHEN status = 'rejected' AND k = 0 THEN 'the number is on the opt-out list'
  WHEN status = 'rejected' THEN 'Invalid parameter: To is not a valid phone number'
  WHEN status = 'unknown' THEN 'no answer from Exotel within 10 seconds' END
  AS error_message,
CASE WHEN status = 'rejected' AND k = 1 THEN 400 END AS error_exotel_status,
CASE WHEN status = 'rejected' AND k = 1 THEN 34001 END AS error_exotel_code,
CASE WHEN status = 'rejected' AND k = 1 THEN d + interval '300 ms'
  WHEN status = 'rejected' THEN created + interval '200 ms'
  WHEN status = 'unknown' THEN d + interval '10 seconds' END AS error_at,
CASE WHEN ended < t0 - interval '1 hour' AND r5 >= 20 THEN last_price + 0.6 * (k - 1) END
  AS price,
ended + (180 + r5 % 600) * interval '1 second' AS price_at,
CASE WHEN ended >= t0 - interval '1 hour' THEN ended END AS price_wait_from,
CASE WHEN NOT recorded THEN NULL
  WHEN ended > t0 - interval '10 minutes' OR (r5 < 4 AND ended > t0 - interval '30 minutes')
    THEN 'pending'
  WHEN r5 < 4 THEN 'failed'
  WHEN i < n / 5 AND n >= 20000 THEN 'deleted' ELSE 'archived' END AS recording_status,
CASE WHEN recorded AND ended <= t0 - interval '10 minutes' AND r5 >= 4
  THEN 417 + 4000 * dur END AS recording_size,
CASE WHEN recorded AND ended <= t0 - interval '10 minutes' AND r5 >= 4
  THEN encode(sha256(convert_to(m, 'UTF8')), 'hex') END AS recording_sha256,
CASE WHEN NOT recorded OR ended > t0 - interval '10 minutes' THEN 0
  WHEN r5 < 4 AND ended > t0 - interval '30 minutes' THEN 2
  WHEN r5 < 4 THEN {RECORDING_FETCHES} ELSE 1 END AS recording_attempts,
CASE WHEN recorded AND r5 < 4 AND ended <= t0 - interval '10 minutes'
  THEN 'Exotel answered 503' END AS recording_error,
CASE WHEN passthru THEN ((i % 9) + 1)::text END AS digits,
CASE WHEN passthru THEN jsonb_build_array(jsonb_build_object('applet', 'passthru',
  'at', {_iso("answered_at + interval '7 seconds'")}, 'digits', ((i % 9) + 1)::text,
  'request', encode(sha256(convert_to(m || '-passthru', 'UTF8')), 'hex'))) END AS flow,
CASE WHEN retried THEN jsonb_build_object('max_attempts', k,
    'on', jsonb_build_array('busy', 'no-answer'), 'intervals', jsonb_build_array(600))
  WHEN with_policy THEN jsonb_build_object('max_attempts', 3,
    'on', jsonb_build_array('busy', 'no-answer'), 'intervals', jsonb_build_array(600, 1800))
  END AS retry,
CASE WHEN retried THEN k WHEN with_policy THEN 3 ELSE 1 END AS max_attempts,
CASE WHEN (status = 'scheduled' AND r1 % 3 = 0) OR status = 'expired'
  THEN '{{"start": "09:00", "end": "21:00", "timezone": "Asia/Kolkata"}}'::jsonb END
  AS "window",
CASE WHEN status = 'scheduled' THEN t0 + (5 + r2 * 3) * interval '1 second' END
  AS next_attempt_at,
CASE WHEN status = 'scheduled' AND r1 % 2 = 0 THEN t0 + (5 + r2 * 3) * interval '1 second' END
  AS not_before,
CASE WHEN status = 'in-progress' THEN t0 + (15 + r5 % 300) * interval '1 second'
  WHEN status = 'unknown' THEN t0 + (600 + r5) * interval '1 second' END AS next_lookup_at"""

_EARLY = """CASE WHEN k >= {n} + 1 THEN jsonb_build_object('n', {n}, 'sid', sid_{n},
  'status', early_status_{n}, 'dispatched_at', {sent},
  'ended_at', {ended}, 'duration', early_seconds_{n}, 'error', NULL::jsonb,
  'price', CASE WHEN price IS NOT NULL THEN '0.600' END) END AS early_{n}"""

_RECORDS = f"""
CASE WHEN recorded THEN 'https://s3-ap-southeast-1.amazonaws.com/exotelrecordings/{ACCOUNT}/'
  || sid || '.mp3' END AS recording_url,
CASE WHEN recording_status IN ('archived', 'deleted')
  THEN ended + (20 + r5 % 40) * interval '1 second' END AS archived_at,
CASE WHEN recording_status = 'deleted'
  THEN ended + interval '900 seconds' + n * interval '150 ms' END AS deleted_at,
{
    _EARLY.format(
        n=1,
        sent=_iso(_attempt_at("1")),
        ended=_iso(_attempt_at("1") + " + early_seconds_1 * interval '1 second'"),
    )
},
{
    _EARLY.format(
        n=2,
        sent=_iso(_attempt_at("2")),
        ended=_iso(_attempt_at("2") + " + early_seconds_2 * interval '1 second'"),
    )
},
CASE WHEN k >= 1 THEN jsonb_build_object('n', k, 'sid', sid, 'status', status,
  'dispatched_at', {_iso("dispatched_at")},
  'ended_at', CASE WHEN status <> 'in-progress' THEN {_iso("final_at")} END,
  'duration', dur,
  'error', CASE WHEN error_code IS NOT NULL THEN jsonb_build_object('code', error_code,
    'message', error_message, 'exotel_status', error_exotel_status,
    'exotel_code', error_exotel_code) END,
  'price', CASE WHEN price IS NOT NULL THEN to_char(last_price, 'FM0.000') END)
  END AS last_attempt"""


def _listed(*items: tuple[str, str]) -> str:
    """An array of the values whose condition holds, in this order."""
    return "\n || ".join(_nothing_unless(condition, values) for condition, values in items)


_EARLY_ENDED = "{at} + early_seconds_{n} * interval '1 second' + interval '3 seconds'"

# A callback about no call we know: one in 200 calls, kept CALLBACK_UNMATCHED_RETENTION_DAYS
# (1 by default) as the service keeps them.
_UNMATCHED = "i % 200 = 7 AND created >= t0 - interval '1 day'"

_ARRAYS = f"""
CASE k WHEN 0 THEN '[]'::jsonb WHEN 1 THEN jsonb_build_array(last_attempt)
  WHEN 2 THEN jsonb_build_array(early_1, last_attempt)
  ELSE jsonb_build_array(early_1, early_2, last_attempt) END AS attempts,
-- The outbox's events, in the order they happened (app.calls.outbox).
{
    _listed(
        ("k >= 2", "'call.in_progress', 'call.scheduled'"),
        ("k >= 3", "'call.in_progress', 'call.scheduled'"),
        ("accepted", "'call.in_progress'"),
        ("answered", "'call.answered'"),
        ("passthru", "'call.input'"),
        ("final_at IS NOT NULL", "'call.' || replace(status, '-', '_')"),
        ("archived_at IS NOT NULL", "'call.updated'"),
        ("price IS NOT NULL", "'call.updated'"),
        ("deleted_at IS NOT NULL", "'call.updated'"),
    )
} AS ev_types,
{
    _listed(
        (
            "k >= 2",
            f"{_attempt_at('1')} + interval '300 ms', "
            + _EARLY_ENDED.format(at=_attempt_at("1"), n=1),
        ),
        (
            "k >= 3",
            f"{_attempt_at('2')} + interval '300 ms', "
            + _EARLY_ENDED.format(at=_attempt_at("2"), n=2),
        ),
        ("accepted", "d + interval '300 ms'"),
        ("answered", "answered_at + interval '1 second'"),
        ("passthru", "answered_at + interval '8 seconds'"),
        ("final_at IS NOT NULL", "final_at"),
        ("archived_at IS NOT NULL", "archived_at"),
        ("price IS NOT NULL", "price_at"),
        ("deleted_at IS NOT NULL", "deleted_at"),
    )
} AS ev_ats,
-- What was received (call_event): D, Exotel's answer to a connect; T, an earlier attempt's
-- end; A, answered; P, a Passthru request; F, the end; U, the end again; X, a callback
-- about no call we know.
{
    _listed(
        ("k >= 2", "'D', 'T'"),
        ("k >= 3", "'D', 'T'"),
        ("k >= 1", "'D'"),
        ("answered", "'A'"),
        ("passthru", "'P'"),
        ("ended IS NOT NULL", "'F'"),
        ("ended IS NOT NULL AND r5 % 5 = 0", "'U'"),
        (_UNMATCHED, "'X'"),
    )
} AS r_codes,
{
    _listed(
        ("k >= 2", "1, 1"),
        ("k >= 3", "2, 2"),
        ("k >= 1", "k"),
        ("answered", "k"),
        ("passthru", "k"),
        ("ended IS NOT NULL", "k"),
        ("ended IS NOT NULL AND r5 % 5 = 0", "k"),
        (_UNMATCHED, "NULL::int"),
    )
} AS r_attempts"""

_UPDATED = "coalesce(ev_ats[cardinality(ev_ats)], error_at, created) AS updated_at"

# The call resource (app.calls.resource.CallOut) after its `status`, as its events carry it:
# the call as it ended, whatever the event.
_CALL_JSON = _compact(f"""json_build_object(
  'from', number, 'caller_id', '{CALLER_ID}', 'app_id', app_id,
  'flow_url', 'http://my.exotel.com/{ACCOUNT}/exoml/start_voice/' || app_id,
  'custom_field', custom_field, 'time_limit', time_limit, 'time_out', time_out,
  'recording_url', recording_url, 'duration', dur, 'conversation_duration',
  CASE WHEN ended IS NOT NULL THEN talk_seconds END, 'on_call_duration', dur,
  'answered_at', {_ist("answered_at")}, 'date_updated', {_ist("ended")}, 'digits', digits,
  'flow', CASE WHEN passthru THEN json_build_array(json_build_object('applet', 'passthru',
    'at', {_utc("answered_at + interval '7 seconds'")}, 'digits', digits))
    ELSE '[]'::json END,
  'recording', CASE WHEN recording_status IS NOT NULL THEN json_build_object(
    'status', recording_status, 'size', recording_size,
    'content_type', CASE WHEN recording_size IS NOT NULL THEN 'audio/mpeg' END,
    'sha256', recording_sha256, 'attempts', recording_attempts, 'error', recording_error,
    'archived_at', {_utc("archived_at")}, 'deleted_at', {_utc("deleted_at")}) END,
  'error', CASE WHEN error_code IS NOT NULL THEN json_build_object('code', error_code,
    'message', error_message, 'exotel_status', error_exotel_status,
    'exotel_code', error_exotel_code) END,
  'error_at', {_utc("error_at")}, 'created_at', {_utc("created")},
  'dispatched_at', {_utc("dispatched_at")}, 'updated_at', {_utc("updated_at")},
  'batch_id', batch_id, 'attempts', attempts, 'next_attempt_at', {_utc("next_attempt_at")},
  'not_before', {_utc("not_before")}, 'expires_at', {_utc("expires_at")},
  'retry', retry, 'window', "window", 'price', price,
  'canceled_at', {_utc("canceled_at")})::text""")


def _facts_sql() -> str:
    query = _SERIES
    for alias, columns in (
        ("z", _STATUS),
        ("g", _KINDS),
        ("s", _ATTEMPTS),
        ("a", _LIFE),
        ("b", _ENDS),
        ("c", _SIDS),
        ("l1", _FACTS),
        ("l2", _RECORDS),
        ("l3", _ARRAYS),
        ("l4", _UPDATED),
        ("l5", f"{_CALL_JSON} AS call_json"),
    ):
        query = _level(query, alias, columns)
    # Rows of 3 KB kept whole: compressing them into TOAST, and out again for each event, cost
    # a tenth of the time.
    return f"CREATE TEMP TABLE h WITH (toast_tuple_target = 8160) ON COMMIT DROP AS\n{query}"


_BATCHES = """
INSERT INTO batch (id, size, created_at)
SELECT batch_id, least(300 + (i / 5000 * 7919) % 2700, n - i), created FROM h
WHERE batch_id IS NOT NULL AND i % 5000 = 0"""

_CALLS = f"""
INSERT INTO call (id, sid, status, from_number, caller_id, app_id, flow_url, custom_field,
  time_limit, time_out, recording_url, duration, conversation_duration, on_call_duration,
  answered_at, date_updated, date_updated_raw, error_code, error_message, error_exotel_status,
  error_exotel_code, error_at, created_at, dispatched_at, updated_at, idempotency_key,
  request_fingerprint, batch_id, not_before, expires_at, retry, "window", max_attempts,
  attempts, price, canceled_at, claimed_by, claimed_at, next_attempt_at, send_tries,
  next_lookup_at, price_wait_from, event_sequence, digits, flow, recording_status,
  recording_size, recording_content_type, recording_sha256, recording_attempts,
  recording_error, recording_archived_at, recording_deleted_at)
SELECT id, sid, status, number, '{CALLER_ID}', app_id,
  'http://my.exotel.com/{ACCOUNT}/exoml/start_voice/' || app_id, custom_field,
  time_limit, time_out, recording_url, dur, CASE WHEN ended IS NOT NULL THEN talk_seconds END,
  dur, answered_at, date_trunc('second', ended), {_exotel("ended")}, error_code,
  error_message, error_exotel_status, error_exotel_code, error_at, created, dispatched_at,
  updated_at, idempotency_key,
  CASE WHEN idempotency_key IS NOT NULL THEN encode(sha256(convert_to(m, 'UTF8')), 'hex') END,
  batch_id, not_before, expires_at, retry, "window", max_attempts, attempts, price,
  canceled_at, NULL, NULL, next_attempt_at, CASE WHEN k > 0 THEN 1 ELSE 0 END,
  next_lookup_at, price_wait_from, cardinality(ev_types), digits, flow, recording_status,
  recording_size, CASE WHEN recording_size IS NOT NULL THEN 'audio/mpeg' END,
  recording_sha256, recording_attempts, recording_error, archived_at, deleted_at
FROM h"""

_DIALS = f"""
INSERT INTO dial (call_id, n, number, sent_at, sid)
SELECT id, a, number, {_attempt_at("a")},
  CASE a WHEN 1 THEN sid_1 WHEN 2 THEN sid_2 ELSE sid_3 END
FROM h, generate_series(1, k) AS a"""


# Exotel's fields as the simulator sends them (app/exotel/simulator.py): a status callback's,
# with its events asked for; the `Call` its connect answers with; a Passthru's query.
_CALLBACK = """jsonb_build_object('CallSid', {sid}, 'Status', {status},
  'RecordingUrl', {recording}, 'DateUpdated', {updated}, 'EventType', {event},
  'DateCreated', {created}, 'To', '', 'From', national, 'PhoneNumberSid', '{caller}',
  'StartTime', {created}, 'EndTime', {ended}, 'ConversationDuration', {talked},
  'Direction', 'outbound-api', 'CustomField', coalesce(custom_field, ''),
  'Legs', jsonb_build_array(jsonb_build_object('OnCallDuration', {on_call},
    'Status', {status})))"""

_RECEIPT_ID = _v7(
    "at", "(substr(m, 9, 10) || lpad(to_hex((ord * 2654435761 + i) % 4294967296), 8, '0'))"
)

_RECEIPTS = f"""
INSERT INTO call_event (kind, receipt_id, call_id, sid, attempt, received_at, method,
  content_type, payload, status, event_type, recording_url, date_updated, date_updated_raw,
  outcome, problem)
SELECT
  CASE code WHEN 'D' THEN 'dispatch' WHEN 'P' THEN 'passthru' ELSE 'status_callback' END,
  CASE WHEN code <> 'D' THEN {_RECEIPT_ID}::uuid END,
  CASE WHEN code <> 'X' THEN id END,
  receipt_sid, attempt, at,
  CASE code WHEN 'D' THEN 'POST' WHEN 'P' THEN 'GET' ELSE 'POST' END,
  CASE WHEN code IN ('D', 'P') THEN NULL ELSE 'application/json' END,
  CASE code
    WHEN 'D' THEN CASE WHEN receipt_sid IS NOT NULL THEN jsonb_build_object(
        'Sid', receipt_sid, 'ParentCallSid', NULL, 'DateCreated', {_exotel("sent")},
        'DateUpdated', {_exotel("sent")}, 'AccountSid', '{ACCOUNT}', 'To', NULL,
        'From', national, 'PhoneNumberSid', '{CALLER_ID}', 'Status', 'in-progress',
        'StartTime', {_exotel("sent")}, 'EndTime', NULL, 'Duration', NULL, 'Price', NULL,
        'Direction', 'outbound-api', 'AnsweredBy', NULL,
        'Uri', '/v1/Accounts/{ACCOUNT}/Calls/' || receipt_sid, 'RecordingUrl', NULL)
      WHEN status = 'rejected' THEN jsonb_build_object('RestException', jsonb_build_object(
        'Status', 400, 'Message', error_message, 'Code', 34001))
      ELSE '{{}}'::jsonb END
    WHEN 'P' THEN jsonb_build_object('CallSid', receipt_sid, 'From', national,
      'To', '{CALLER_ID}', 'Direction', 'outbound-api', 'CurrentTime', {_exotel("at")},
      'CustomField', id::text, 'RecordingUrl', '', 'digits', '"' || digits || '"')
    WHEN 'A' THEN {
    _CALLBACK.format(
        sid="receipt_sid",
        status="'in-progress'",
        recording="''",
        updated=_exotel("answered_at"),
        event="'answered'",
        created=_exotel("d"),
        caller=CALLER_ID,
        ended="''",
        talked="0",
        on_call="0",
    )
}
    WHEN 'T' THEN {
    _CALLBACK.format(
        sid="receipt_sid",
        status="receipt_status",
        recording="''",
        updated=_exotel("at"),
        event="'terminal'",
        created=_exotel("sent"),
        caller=CALLER_ID,
        ended=_exotel("at"),
        talked="0",
        on_call="early_seconds",
    )
}
    ELSE {
    _CALLBACK.format(
        sid="receipt_sid",
        status="receipt_status",
        recording="coalesce(recording_url, '')",
        updated=_exotel("ended"),
        event="'terminal'",
        created=_exotel("d"),
        caller=CALLER_ID,
        ended=_exotel("ended"),
        talked="talk_seconds",
        on_call="dur",
    )
}
    END,
  CASE WHEN code <> 'P' THEN receipt_status END,
  CASE WHEN code IN ('A', 'T', 'F', 'U', 'X') THEN
    CASE WHEN code = 'A' THEN 'answered' ELSE 'terminal' END END,
  CASE WHEN code IN ('F', 'U') THEN recording_url END,
  CASE WHEN code IN ('A', 'T', 'F', 'U', 'X') THEN date_trunc('second',
    CASE code WHEN 'A' THEN answered_at WHEN 'T' THEN at ELSE ended END) END,
  CASE WHEN code IN ('A', 'T', 'F', 'U', 'X') THEN {
    _exotel("CASE code WHEN 'A' THEN answered_at WHEN 'T' THEN at ELSE ended END")
} END,
  CASE code WHEN 'U' THEN 'duplicate' WHEN 'X' THEN 'unknown_sid' ELSE 'applied' END,
  CASE WHEN code = 'D' AND status = 'rejected' THEN error_message
    WHEN code = 'D' AND status = 'unknown' THEN 'no answer within 10 seconds' END
FROM (
  SELECT h.*, r.code, r.attempt, r.ord,
    '0' || substr(number, 4) AS national,
    {_attempt_at("r.attempt")} AS sent,
    CASE r.attempt WHEN 1 THEN early_seconds_1 ELSE early_seconds_2 END AS early_seconds,
    CASE WHEN r.code = 'X' THEN left(md5(m || '-unmatched'), 30) || 'pm'
      WHEN r.attempt = 1 THEN sid_1 WHEN r.attempt = 2 THEN sid_2 ELSE sid_3 END
      AS receipt_sid,
    CASE r.code WHEN 'D' THEN CASE WHEN accepted OR r.attempt < k THEN 'in-progress' END
      WHEN 'A' THEN 'in-progress' WHEN 'P' THEN NULL WHEN 'X' THEN 'completed'
      WHEN 'T' THEN CASE r.attempt WHEN 1 THEN early_status_1 ELSE early_status_2 END
      ELSE status END AS receipt_status,
    CASE r.code
      WHEN 'D' THEN {_attempt_at("r.attempt")} + interval '300 ms'
      WHEN 'T' THEN {_attempt_at("r.attempt")} + (CASE r.attempt WHEN 1 THEN early_seconds_1
        ELSE early_seconds_2 END + 2) * interval '1 second'
      WHEN 'A' THEN answered_at + interval '1 second'
      WHEN 'P' THEN answered_at + interval '7 seconds'
      WHEN 'F' THEN ended + interval '2 seconds'
      WHEN 'U' THEN ended + interval '45 seconds'
      ELSE created + interval '5 seconds' END AS at
  FROM h, unnest(r_codes, r_attempts) WITH ORDINALITY AS r(code, attempt, ord)
  OFFSET 0) AS x"""

# Where the call stands after each event, and where it stood before.
_EVENT_STATUS = """CASE e.type WHEN 'call.in_progress' THEN 'in-progress'
  WHEN 'call.answered' THEN 'in-progress' WHEN 'call.input' THEN 'in-progress'
  WHEN 'call.scheduled' THEN 'scheduled' ELSE status END"""
_PREVIOUS_STATUS = """CASE e.type WHEN 'call.in_progress' THEN 'queued'
  WHEN 'call.updated' THEN status WHEN 'call.expired' THEN 'scheduled'
  WHEN 'call.rejected' THEN 'queued' WHEN 'call.unknown' THEN 'queued'
  WHEN 'call.canceled' THEN 'queued' ELSE 'in-progress' END"""
_PUBLIC_ID = "'evt_' || " + _v7(
    "e.at", "(substr(m, 5, 14) || lpad(to_hex((e.seq * 40503 + i) % 65536), 4, '0'))"
)
# A delivery's fate, evenly spread: two in a thousand given up.
_DELIVERY_HASH = "(dl.id * 1597334677 % 2147483648) / 2147484"

_EVENTS = f"""
WITH ev AS (
  INSERT INTO event (id, public_id, txid, type, call_id, sequence, created_at, body)
  SELECT i * {EVENT_SLOTS} + e.seq, {_PUBLIC_ID}, txid, e.type, id, e.seq, e.at,
    '{{"id":"' || {_PUBLIC_ID} || '","type":"' || e.type || '","timestamp":"'
    || {_iso("e.at")} || '","data":{{"call":{{"id":"' || id || '","sid":'
    || coalesce('"' || sid || '"', 'null') || ',"status":"' || {_EVENT_STATUS} || '",'
    || substr(call_json, 2) || ',"previous_status":"' || {_PREVIOUS_STATUS}
    || '","sequence":' || e.seq || '}}}}'
  FROM h, unnest(ev_types, ev_ats) WITH ORDINALITY AS e(type, at, seq),
    (SELECT pg_current_xact_id()::text::bigint AS txid) AS t
  RETURNING id, call_id, type, sequence, created_at
), dl AS (
  INSERT INTO delivery (id, event_id, endpoint_id, call_id, sequence, state, attempts,
    next_attempt_at, trigger, claimed_by, claimed_at, created_at, finished_at)
  SELECT dl.id, ev.id, endpoint, ev.call_id, ev.sequence,
    CASE WHEN live THEN 'pending' WHEN {_DELIVERY_HASH} < 2 THEN 'failed'
      ELSE 'delivered' END,
    CASE WHEN live THEN 0 WHEN {_DELIVERY_HASH} < 2 THEN 6 ELSE 1 END,
    CASE WHEN live OR {_DELIVERY_HASH} >= 2 THEN ev.created_at
      ELSE ev.created_at + interval '10 minutes' END,
    'scheduled', NULL, NULL, ev.created_at,
    CASE WHEN live THEN NULL
      WHEN {_DELIVERY_HASH} < 2 THEN ev.created_at + interval '10 minutes 1 second'
      ELSE ev.created_at + (40 + dl.id % 200) * interval '1 ms' END
  FROM ev JOIN h ON h.i = ev.id / {EVENT_SLOTS}
    JOIN (VALUES (0, CAST('{ENDPOINT_ALL}' AS uuid)), (1, CAST('{ENDPOINT_ENDS}' AS uuid)))
      AS ep(k, endpoint) ON ep.k = 0 OR ev.type IN {ENDED_TYPES!r},
    LATERAL (SELECT ev.id * 2 + ep.k AS id) AS dl
  RETURNING id, endpoint_id, state, attempts, created_at, finished_at
)
INSERT INTO delivery_attempt (id, delivery_id, endpoint_id, attempted_at, status_code, error,
  latency_ms, response_body, trigger)
SELECT dl.id * 8 + a, dl.id, dl.endpoint_id,
  CASE WHEN dl.state = 'delivered' THEN dl.created_at + interval '5 ms'
    ELSE dl.created_at + (a - 1) * interval '2 minutes' END,
  CASE WHEN dl.state = 'delivered' THEN 200 WHEN a % 2 = 1 THEN 503 END,
  CASE WHEN dl.state = 'delivered' THEN NULL WHEN a % 2 = 1 THEN 'the endpoint answered 503'
    ELSE 'connection refused' END,
  CASE WHEN dl.state = 'delivered' OR a % 2 = 1 THEN 35 + dl.id % 200 END,
  CASE WHEN dl.state = 'delivered' THEN '' WHEN a % 2 = 1 THEN 'Service Unavailable' END,
  'scheduled'
FROM dl, generate_series(1, dl.attempts) AS a"""

_RECORDING_JOBS = """
INSERT INTO recording_job (call_id, due_at, claimed_by, claimed_at, retries, fetches, held_path)
SELECT id, CASE WHEN recording_attempts > 0 THEN t0 + (r5 * 7) * interval '1 second'
    ELSE ended + interval '30 seconds' END,
  NULL, NULL, recording_attempts, recording_attempts, NULL
FROM h WHERE recording_status = 'pending'"""

# Numbers opted out: those calls were refused for, and a few customers who asked (in the
# flow, or through whoever uses the API) after a call.
_OPT_OUTS = """
INSERT INTO opt_out (number, reason, source, created_at)
SELECT number, CASE WHEN passthru THEN NULL ELSE 'asked not to be called' END,
  CASE WHEN passthru THEN 'passthru' ELSE 'api' END,
  CASE WHEN error_code = 'number_opted_out' THEN created - interval '1 day'
    ELSE ended + interval '1 minute' END
FROM h
WHERE error_code = 'number_opted_out' OR (ended IS NOT NULL AND r5 % 500 = 17)
ON CONFLICT (number) DO NOTHING"""

_ENDPOINTS = f"""
INSERT INTO webhook_endpoint (id, url, description, event_types, enabled, disabled_reason,
  secret, previous_secrets, created_at, updated_at, last_success_at, failing_since)
VALUES
  ('{ENDPOINT_ALL}', 'http://127.0.0.1:8091/exocall/events', 'the CRM: every event',
   'null'::json, true, NULL, 'whsec_' || encode(sha256('history-crm'), 'base64'), '[]'::json,
   CAST(:since AS timestamptz), CAST(:since AS timestamptz), CAST(:t0 AS timestamptz), NULL),
  ('{ENDPOINT_ENDS}', 'http://127.0.0.1:8092/hooks/call-ended', 'billing: calls ended',
   CAST(:types AS json), true, NULL,
   'whsec_' || encode(sha256('history-billing'), 'base64'), '[]'::json,
   CAST(:since AS timestamptz), CAST(:since AS timestamptz), CAST(:t0 AS timestamptz), NULL)
ON CONFLICT (id) DO NOTHING"""

_STATEMENTS = (_BATCHES, _CALLS, _DIALS, _RECEIPTS, _EVENTS, _RECORDING_JOBS, _OPT_OUTS)
# Tables whose ids were given, and where their sequences must go on from.
_GIVEN_IDS = ("event", "delivery", "delivery_attempt")


async def fill(
    url: str,
    *,
    calls: int,
    chunk: int = CHUNK,
    progress: Callable[[str], None] | None = None,
) -> History:
    """Fill the database at `url` (migrated first; it must hold no calls) with `calls` calls
    ending now and what the service keeps of them. Each chunk of calls is a transaction.

    As bulk loaders do, the filled tables' indexes but their primary keys (and the unique
    constraints a foreign key needs) are dropped first and built again at the end, each at once
    from the rows, not row by row. They are built again if the fill fails too; if the process
    dies before, they are lost (the definitions are only in its memory), with the database half
    filled: drop it."""
    if calls < 1:
        raise ValueError("calls: at least 1")
    started = time.monotonic()
    steps: dict[str, float] = {}
    await asyncio.to_thread(migrate.upgrade, url)
    engine = create_engine(url)
    try:
        async with engine.connect() as db:
            if await db.scalar(text("SELECT EXISTS (SELECT FROM call)")):
                raise RuntimeError(f"{url}: the database holds calls already; fill an empty one")
            indexes = await _drop_indexes(db)
            fillfactor = await _call_fillfactor(db, CALL_FILLFACTOR)
        try:
            async with engine.connect() as db:
                await _fill(db, calls=calls, chunk=chunk, started=started, progress=progress)
        finally:
            steps["fill"] = time.monotonic() - started
            async with engine.connect() as db:
                await _call_fillfactor(db, fillfactor)
            await _create_indexes(engine, indexes, progress=progress)
            steps["indexes"] = time.monotonic() - started - steps["fill"]
        async with engine.connect() as db:
            await (await db.execution_options(isolation_level="AUTOCOMMIT")).execute(
                text("ANALYZE")
            )
            steps["analyze"] = time.monotonic() - started - steps["fill"] - steps["indexes"]
            rows = {table: await _count(db, table) for table in TABLES}
    finally:
        await engine.dispose()
    return History(rows=rows, seconds=time.monotonic() - started, steps=steps)


async def _fill(
    db: AsyncConnection,
    *,
    calls: int,
    chunk: int,
    started: float,
    progress: Callable[[str], None] | None,
) -> None:
    # Before the session's first temporary table: each chunk's facts stay in memory.
    await db.execute(text("SET temp_buffers = '512MB'"))
    # Nothing is lost but the fill's last commits if the server stops.
    await db.execute(text("SET synchronous_commit = off"))
    await db.commit()
    facts = text(_facts_sql())
    statements = [text(statement) for statement in _STATEMENTS]
    t0: datetime = await db.scalar(text("SELECT now()"))
    since = t0 - timedelta(hours=calls / CALLS_AN_HOUR, days=1)
    types = json.dumps(list(ENDED_TYPES))
    await db.execute(text(_ENDPOINTS), {"t0": t0, "since": since, "types": types})
    await db.commit()
    live = min(LIVE, calls // 20)
    superuser = await db.scalar(text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"))
    for lo in range(0, calls, chunk):
        hi = min(lo + chunk, calls)
        params = {"t0": t0, "n": calls, "live": live, "lo": lo, "hi": hi}
        if superuser:
            # Every reference is consistent by construction: the foreign keys'
            # triggers, a look-up a row, would take a third of the time. (The calls'
            # tally's fire ALWAYS: they still count.)
            await db.execute(text("SET LOCAL session_replication_role = replica"))
        await db.execute(facts, params)
        for statement in statements:
            await db.execute(statement)
        await db.commit()
        if progress:
            progress(f"{hi:,} calls of {calls:,} in {time.monotonic() - started:.0f} s")
    await _continue_ids(db)
    await db.commit()


async def _drop_indexes(db: AsyncConnection) -> list[str]:
    """Drop the filled tables' indexes but their primary keys (the foreign keys' targets) and
    return the statements that make them again, from the definitions the database has: the
    migrations' are not repeated. A unique constraint is added back on its index, built first."""
    indexes = (
        await db.execute(
            text(
                "SELECT CASE WHEN c.oid IS NULL"
                "   THEN format('DROP INDEX %s', x.indexrelid::regclass)"
                "   ELSE format('ALTER TABLE %s DROP CONSTRAINT %I', x.indrelid::regclass,"
                "     c.conname) END,"
                " pg_get_indexdef(x.indexrelid),"
                " CASE WHEN c.oid IS NOT NULL THEN"
                "   format('ALTER TABLE %s ADD CONSTRAINT %I UNIQUE USING INDEX %I',"
                "     x.indrelid::regclass, c.conname, i.relname) END"
                " FROM pg_index x JOIN pg_class t ON t.oid = x.indrelid"
                " JOIN pg_class i ON i.oid = x.indexrelid"
                " LEFT JOIN pg_constraint c"
                "   ON c.conrelid = x.indrelid AND c.conindid = x.indexrelid"
                " WHERE t.relname = ANY(CAST(:tables AS text[]))"
                " AND t.relnamespace = CAST(current_schema() AS regnamespace)"
                " AND NOT x.indisprimary AND (c.oid IS NULL OR (c.contype = 'u'"
                "   AND NOT c.condeferrable AND NOT EXISTS (SELECT FROM pg_constraint f"
                "     WHERE f.contype = 'f' AND f.conindid = x.indexrelid)))"
                " ORDER BY t.relname, x.indexrelid"
            ),
            {"tables": list(TABLES)},
        )
    ).all()
    statements: list[str] = []
    for drop, build, constraint in indexes:
        await db.execute(text(drop))
        statements += [build, constraint] if constraint else [build]
    await db.commit()
    return statements


async def _call_fillfactor(db: AsyncConnection, percent: int | None) -> int | None:
    """Set `call`'s fillfactor (None: the default) for the rows written after; the one it had."""
    had = await db.scalar(
        text(
            "SELECT CAST(option_value AS integer) FROM pg_options_to_table("
            "(SELECT reloptions FROM pg_class WHERE oid = CAST('call' AS regclass)))"
            " WHERE option_name = 'fillfactor'"
        )
    )
    if percent is None:
        await db.execute(text("ALTER TABLE call RESET (fillfactor)"))
    else:
        await db.execute(text(f"ALTER TABLE call SET (fillfactor = {int(percent)})"))
    await db.commit()
    return had


async def _create_indexes(
    engine: AsyncEngine, definitions: list[str], *, progress: Callable[[str], None] | None
) -> None:
    """Build each index from its definition, sorting in memory, with the parallel workers the
    server allows. If one fails, those not built are named in the error."""
    built = 0
    try:
        async with engine.connect() as db:
            db = await db.execution_options(isolation_level="AUTOCOMMIT")
            await db.execute(text("SET maintenance_work_mem = '1GB'"))
            await db.execute(text("SET max_parallel_maintenance_workers = 4"))
            for definition in definitions:
                began = time.monotonic()
                await db.execute(text(definition))
                built += 1
                if progress:
                    progress(f"{time.monotonic() - began:5.1f} s: {definition[:80]}")
    except Exception as error:
        unbuilt = "\n".join(f"{definition};" for definition in definitions[built:])
        raise RuntimeError(f"indexes left to build by hand:\n{unbuilt}") from error


async def _continue_ids(db: AsyncConnection) -> None:
    for table in _GIVEN_IDS:
        await db.execute(
            text(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                f" (SELECT coalesce(max(id), 0) + 1 FROM {table}), false)"
            )
        )


async def _count(db: AsyncConnection, table: str) -> int:
    return int(await db.scalar(text(f"SELECT count(*) FROM {table}")) or 0)


async def sizes(url: str) -> dict[str, tuple[int, int]]:
    """Bytes of each table filled, and of its indexes: (table, indexes). The table's count
    TOAST and the free space map, as `pg_table_size` does."""
    engine = create_engine(url)
    try:
        async with engine.connect() as db:
            rows = await db.execute(
                text(
                    "SELECT t, pg_table_size(t::regclass), pg_indexes_size(t::regclass)"
                    " FROM unnest(CAST(:tables AS text[])) AS t"
                ),
                {"tables": list(TABLES)},
            )
            return {table: (int(data), int(indexes)) for table, data, indexes in rows}
    finally:
        await engine.dispose()


def report(history: History, sizes: dict[str, tuple[int, int]]) -> str:
    """What was made, as a table: rows, and megabytes of data and of indexes."""
    lines = [f"{'table':<18} {'rows':>13} {'table MB':>10} {'index MB':>10}"]
    mb = 1024 * 1024
    for table in TABLES:
        data, indexes = sizes[table]
        lines.append(
            f"{table:<18} {history.rows[table]:>13,} {data / mb:>10,.1f} {indexes / mb:>10,.1f}"
        )
    data = sum(d for d, _ in sizes.values())
    indexes = sum(i for _, i in sizes.values())
    lines.append(
        f"{'all':<18} {sum(history.rows.values()):>13,} {data / mb:>10,.1f} {indexes / mb:>10,.1f}"
    )
    lines.append(
        f"{history.rows['call']:,} calls in {history.seconds:,.0f} s: "
        f"{history.calls_per_second:,.0f} calls a second"
        f" ({', '.join(f'{step} {seconds:,.0f} s' for step, seconds in history.steps.items())})"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.history", description=__doc__)
    parser.add_argument("--calls", type=int, required=True, help="how many calls to make")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL"),
        help="the database to fill (default: DATABASE_URL)",
    )
    parser.add_argument("--chunk", type=int, default=CHUNK, help="calls a transaction")
    args = parser.parse_args(argv)
    if not args.database_url:
        parser.error("set DATABASE_URL or give --database-url")

    def say(line: str) -> None:
        print(line, flush=True)

    history = asyncio.run(fill(args.database_url, calls=args.calls, chunk=args.chunk, progress=say))
    print(report(history, asyncio.run(sizes(args.database_url))))


if __name__ == "__main__":
    main()
