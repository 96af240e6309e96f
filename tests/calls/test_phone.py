from __future__ import annotations

import pytest

from app.calls.phone import InvalidPhoneNumber, to_e164, to_exotel_dial_form
from app.logs import mask


@pytest.mark.parametrize(
    ("given", "e164"),
    [
        ("09052161119", "+919052161119"),
        ("9052161119", "+919052161119"),
        ("+919052161119", "+919052161119"),
        ("919052161119", "+919052161119"),
        ("00919052161119", "+919052161119"),
        ("+91 90521 61119", "+919052161119"),
        ("08030752400", "+918030752400"),
        ("011-2345-6789", "+911123456789"),
        ("+14155550100", "+14155550100"),
        ("+447700900123", "+447700900123"),
    ],
)
def test_valid_numbers_become_e164(given: str, e164: str) -> None:
    assert to_e164(given) == e164


@pytest.mark.parametrize(
    "given",
    [
        "",
        "12345",
        "0052161119",
        "+9190521611190",
        "+91905216111",
        "phone",
        "+0123456789",
        "14155550100",
        # Digits of other scripts, which Python's `\d` matches: never stored as a number.
        "9\u0966\u096b\u0968\u0967\u096c\u0967\u0967\u0967\u0966",  # 9, then Devanagari
        "+91\uff19\uff10\uff15\uff12\uff11\uff16\uff11\uff11\uff11\uff10",  # fullwidth
        "0905216111\u0660",  # an Arabic-Indic zero last
        "90521\u200361119",  # an em space: what separates digits is ASCII too
        "90521\t61119",
        "9----052161119",  # more separators in a row than the logs' masker looks through
    ],
)
def test_invalid_numbers_are_refused(given: str) -> None:
    with pytest.raises(InvalidPhoneNumber):
        to_e164(given)


def test_exotel_gets_the_documented_national_form_for_indian_numbers() -> None:
    assert to_exotel_dial_form("+919052161119") == "09052161119"
    assert to_exotel_dial_form("+14155550100") == "+14155550100"


@pytest.mark.parametrize(
    ("number", "masked"),
    [
        ("+919052161119", "+91******1119"),
        ("09052161119", "0******1119"),
        ("123", "***"),
        (None, ""),
    ],
)
def test_mask_keeps_only_the_last_four_digits(number: str | None, masked: str) -> None:
    assert mask(number) == masked
