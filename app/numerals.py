"""Numbers written in text: ASCII digits, and nothing else, wherever exocall reads one (a phone
number, an app id, a duration, a count, a byte range).

Python reads more: `\\d` and `str.isdigit()` match the digits of every script (Devanagari,
Arabic-Indic, fullwidth, superscripts), and `int()` reads most of those, and `1_000` and ` 12 `
too. Exotel, phone networks and HTTP write none of them; taken in, they make numbers no one can
dial or compare.
"""

from __future__ import annotations

import re

# For patterns: never `\d`.
DIGIT = "[0-9]"
# What may stand between a phone number's digits (`090-5216 1110`, `(0) 90521.61110`): these,
# at most so many in a row. The logs' masker looks for numbers spelled so.
NUMBER_SEPARATORS = " -()."
MOST_SEPARATORS_IN_A_ROW = 3
# A whole number, maybe with a zero fraction (`32.0`), as JSON writers print one.
_INTEGER = re.compile(rf"(-?{DIGIT}+)(?:\.0+)?")


def integer(text: str) -> int | None:
    """The whole number `text` spells in ASCII digits; None for any other text."""
    match = _INTEGER.fullmatch(text)
    if match is None:
        return None
    try:
        return int(match[1])
    except ValueError:  # beyond the 4300 digits Python reads
        return None
