"""A campaign's CSV file: every row read and validated as the service validates a call, before
anything is sent, and given the idempotency key that keeps it from being dialled twice."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from app.api.schemas import BatchCallCreate
from app.calls.phone import InvalidPhoneNumber, to_e164
from app.client.policy import PolicyInvalid, PolicyText

# The header names of the number's column, in order of preference.
NUMBER_COLUMNS = ("number", "from", "phone")
CUSTOM_FIELD = "custom_field"
IDEMPOTENCY_KEY = "idempotency_key"
# A row's own policy, written as the options of the same names are (`--retry 3:busy:30m`):
# a cell that is empty leaves the option's value.
POLICY_COLUMNS = ("retry", "window", "not_before", "expires_at")
# What the CLI's options are called, for problems that are about them rather than a row.
_OPTIONS = {"app_id": "--app-id", "caller_id": "--caller-id"}


@dataclass(frozen=True)
class CampaignRow:
    line: int  # in the file, for people
    number: str  # as written in the file
    call: BatchCallCreate  # validated, with its idempotency key

    @property
    def key(self) -> str:
        assert self.call.idempotency_key is not None  # read_campaign gives every row one
        return self.call.idempotency_key


@dataclass(frozen=True)
class Campaign:
    # Derived from the file's content and the app id: the same file for the same flow is the
    # same campaign, and its rows get the same keys, however often it is run.
    campaign_id: str
    rows: list[CampaignRow]
    ignored_columns: list[str]


@dataclass(frozen=True, order=True)
class Problem:
    line: int  # 0: about the file or the options, not one row
    field: str
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        return f"{where}{self.field}: {self.message}"


class CampaignInvalid(Exception):
    """Rows (or options) the service would refuse: every one of them, so that one run shows them
    all."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(set(problems))
        super().__init__("\n".join(str(problem) for problem in self.problems))


class _CsvReader(Protocol):
    line_num: int

    def __next__(self) -> list[str]: ...


@dataclass(frozen=True)
class _Cells:
    """One row's cells by meaning, stripped; empty where the row has none."""

    line: int
    count: int  # how many cells the row has
    number: str
    custom_field: str
    idempotency_key: str
    policy: PolicyText


@dataclass(frozen=True)
class _Columns:
    number: int
    number_name: str
    custom_field: int | None
    idempotency_key: int | None
    policy: dict[str, int]  # the policy's columns the file has
    width: int

    def read(self, line: int, cells: list[str]) -> _Cells:
        def cell(index: int | None) -> str:
            return cells[index].strip() if index is not None and index < len(cells) else ""

        return _Cells(
            line=line,
            count=len(cells),
            number=cell(self.number),
            custom_field=cell(self.custom_field),
            idempotency_key=cell(self.idempotency_key),
            policy=PolicyText(**{name: cell(index) for name, index in self.policy.items()}),
        )


def campaign_id_of(content: bytes, app_id: str) -> str:
    digest = hashlib.sha256(b"exocall campaign\0" + app_id.encode() + b"\0" + content)
    return digest.hexdigest()[:24]


def derived_key(campaign_id: str, line: int) -> str:
    """The idempotency key of a row whose CSV gives none."""
    return f"exocall-campaign-{campaign_id}-line-{line}"


def read_campaign(
    path: Path, *, app_id: str, caller_id: str | None, policy: PolicyText | None = None
) -> Campaign:
    """The file's rows, each validated as `POST /calls/batch` would validate it, with `policy`
    under its own; raises `CampaignInvalid` naming every bad row (and duplicated numbers or
    keys) by its line."""
    content = path.read_bytes()
    campaign_id = campaign_id_of(content, app_id)
    records = csv.reader(io.StringIO(_decoded(content), newline=""))
    columns, ignored = _header(records)
    rows: list[CampaignRow] = []
    problems: list[Problem] = []
    options = {"app_id": app_id, "caller_id": caller_id}
    first_lines = _FirstLines(columns.number_name)
    for line, cells in _records(records, problems):
        read = columns.read(line, cells)
        row, row_problems = _validated_row(
            read, columns, campaign_id, options, policy or PolicyText()
        )
        problems += row_problems + first_lines.repeats(read)
        if row is not None:
            rows.append(row)
    if not rows and not problems:
        problems.append(Problem(0, path.name, "no rows to call"))
    if problems:
        raise CampaignInvalid(problems)
    return Campaign(campaign_id, rows, ignored)


def _decoded(content: bytes) -> str:
    try:
        return content.decode("utf-8-sig")  # a spreadsheet's export may start with a BOM
    except UnicodeDecodeError as exc:
        raise CampaignInvalid([Problem(0, "file", f"not UTF-8 text (byte {exc.start})")]) from None


def _header(records: _CsvReader) -> tuple[_Columns, list[str]]:
    names = [name.strip().lower() for name in next(records, [])]
    number_name = next((name for name in NUMBER_COLUMNS if name in names), None)
    if number_name is None:
        wanted = ", ".join(NUMBER_COLUMNS)
        raise CampaignInvalid([Problem(1, "header", f"needs a column named one of: {wanted}")])
    repeated = sorted({name for name in names if name and names.count(name) > 1})
    if repeated:
        raise CampaignInvalid([Problem(1, "header", f"repeated column {', '.join(repeated)}")])
    known = {number_name, CUSTOM_FIELD, IDEMPOTENCY_KEY, *POLICY_COLUMNS}
    columns = _Columns(
        number=names.index(number_name),
        number_name=number_name,
        custom_field=names.index(CUSTOM_FIELD) if CUSTOM_FIELD in names else None,
        idempotency_key=names.index(IDEMPOTENCY_KEY) if IDEMPOTENCY_KEY in names else None,
        policy={name: names.index(name) for name in POLICY_COLUMNS if name in names},
        width=len(names),
    )
    return columns, [name for name in names if name not in known]


def _records(records: _CsvReader, problems: list[Problem]) -> Iterator[tuple[int, list[str]]]:
    """The data rows with their line numbers, blank lines skipped; a line the csv module cannot
    read is a problem, and the rest of the file is still read."""
    while True:
        try:
            cells = next(records)
        except StopIteration:
            return
        except csv.Error as exc:
            problems.append(Problem(records.line_num, "row", str(exc)))
            continue
        if any(cell.strip() for cell in cells):
            yield records.line_num, cells


def _validated_row(
    read: _Cells, columns: _Columns, campaign_id: str, options: dict[str, Any], policy: PolicyText
) -> tuple[CampaignRow | None, list[Problem]]:
    line = read.line
    problems = []
    if read.count > columns.width:
        problems.append(
            Problem(line, "row", f"{read.count} fields, the header has {columns.width}")
        )
    if not read.number:
        problems.append(Problem(line, columns.number_name, "missing"))
    try:
        # The row's cells over the options: the names are the columns' (the options' values
        # were checked before the file was read).
        policy_fields = read.policy.under(policy).fields(names={n: n for n in POLICY_COLUMNS})
    except PolicyInvalid as exc:
        problems.append(Problem(line, exc.field, exc.reason))
        policy_fields = {}
    fields = (
        options
        | policy_fields
        | {
            "from": read.number,
            "custom_field": read.custom_field or None,
            "idempotency_key": read.idempotency_key or derived_key(campaign_id, line),
        }
    )
    try:
        call = BatchCallCreate.model_validate(fields)
    except ValidationError as exc:
        invalid = _validation_problems(exc, line, columns)
        # A missing number is said once, not again as an invalid one.
        problems += [p for p in invalid if read.number or p.field != columns.number_name]
        return None, problems
    return (None if problems else CampaignRow(line, read.number, call)), problems


def _validation_problems(exc: ValidationError, line: int, columns: _Columns) -> list[Problem]:
    problems = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else "row"
        message = str(error["msg"]).removeprefix("Value error, ")
        if name in _OPTIONS:  # the same for every row: said once, about the option
            problems.append(Problem(0, _OPTIONS[name], message))
        else:
            problems.append(Problem(line, columns.number_name if name == "from" else name, message))
    return problems


class _FirstLines:
    """Where each number and each key of the file was first seen: a second one is a mistake (a
    second call to the same person, or the first call replayed instead of a new one). Checked on
    every row, valid or not, so that one run reports them all."""

    def __init__(self, number_column: str) -> None:
        self._number_column = number_column
        self._numbers: dict[str, int] = {}
        self._keys: dict[str, int] = {}

    def repeats(self, read: _Cells) -> list[Problem]:
        problems = []
        with contextlib.suppress(InvalidPhoneNumber):  # an invalid number is reported already
            first = self._numbers.setdefault(to_e164(read.number), read.line)
            if first != read.line:
                message = f"{read.number} is already on line {first}"
                problems.append(Problem(read.line, self._number_column, message))
        key = read.idempotency_key
        if key and (first := self._keys.setdefault(key, read.line)) != read.line:
            problems.append(Problem(read.line, IDEMPOTENCY_KEY, f"already used on line {first}"))
        return problems
