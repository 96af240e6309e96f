"""Phone numbers: one canonical form (E.164) stored and compared, and Exotel's form sent.
(Their masked form, for logs and pages, is `app.logs.mask`.)"""

from __future__ import annotations

import re

from app.numerals import DIGIT, MOST_SEPARATORS_IN_A_ROW, NUMBER_SEPARATORS

_SEPARATORS = re.compile(f"[{re.escape(NUMBER_SEPARATORS)}]")
_TOO_MANY_SEPARATORS = re.compile(
    f"[{re.escape(NUMBER_SEPARATORS)}]{{{MOST_SEPARATORS_IN_A_ROW + 1}}}"
)
# India's national significant numbers have 10 digits: mobiles start with 6-9, landlines with
# their STD code (11 Delhi, 22 Mumbai, 80 Bengaluru, ...), which never starts with 0.
_INDIAN_NSN = re.compile(f"[1-9]{DIGIT}{{9}}")
_INDIAN_FORMS = re.compile(rf"(?:\+91|0091|91|0)?(?P<nsn>{DIGIT}{{10}})")
_E164 = re.compile(rf"\+[1-9]{DIGIT}{{7,14}}")


class InvalidPhoneNumber(ValueError):
    pass


def to_e164(number: str) -> str:
    """Canonical E.164 for an Indian number in any usual spelling, or any E.164 number.

    Accepted: `09052161119`, `9052161119`, `+919052161119`, `919052161119`, `08030752400`
    (landline with STD code), `+14155550100`. Spaces, hyphens, dots and brackets between the
    digits are ignored (three in a row at most).
    """
    if _TOO_MANY_SEPARATORS.search(number):
        raise InvalidPhoneNumber("not a valid Indian mobile/landline or E.164 number")
    compact = _SEPARATORS.sub("", number)
    indian = _INDIAN_FORMS.fullmatch(compact)
    if indian and _INDIAN_NSN.fullmatch(indian["nsn"]):
        return "+91" + indian["nsn"]
    if _E164.fullmatch(compact) and not compact.startswith("+91"):
        return compact
    raise InvalidPhoneNumber("not a valid Indian mobile/landline or E.164 number")


def to_exotel_dial_form(e164: str) -> str:
    """What `Calls/connect` wants in `From`: `0` + 10 digits for Indian numbers (the documented
    form), E.164 otherwise."""
    return "0" + e164[3:] if e164.startswith("+91") else e164
