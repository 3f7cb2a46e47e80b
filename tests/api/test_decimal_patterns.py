"""Each decimal field's OpenAPI pattern matches exactly the strings the field accepts."""

from __future__ import annotations

import itertools
import re
from decimal import Decimal

import pytest
from marshmallow import ValidationError

from gateway.api.fields import DecimalString, decimal_pattern, decimal_schema

INTEGER_PARTS = ["0", "00", "01", "-0", "-1", "1", "6", "7", "8", "9", "10", "99", "100", "101",
                 "344", "345", "346", "999", "1000", "999999", "1000000", "1000001",
                 "999999999", "1000000000", "1000000001", "12345678901"]  # fmt: skip
FRACTIONS = ["", ".", ".0", ".00000", ".000000", ".1", ".00001", ".000001", ".5", ".12345",
             ".123456", ".0000", ".00010", "e3", "E-2"]  # fmt: skip
OTHERS = ["", " 1", "1 ", "+1", ".5", "1_000", "NaN", "Infinity", "\u0661", "0x10", "1.2.3"]
CANDIDATES = [i + f for i, f in itertools.product(INTEGER_PARTS, FRACTIONS)] + OTHERS

BOUNDS = [
    (5, Decimal(0), True, Decimal(1_000_000_000)),  # credits
    (5, Decimal(0), True, Decimal(1_000_000)),  # rate_amount
    (5, Decimal(0), False, Decimal(100)),  # tax_rate
    (5, Decimal(0), False, None),
    (5, None, False, None),
    (0, Decimal(0), True, Decimal(7)),
    (2, Decimal(0), True, Decimal(345)),
    (2, Decimal(0), False, Decimal(1)),
]


def accepted(field: DecimalString, text: str) -> bool:
    try:
        field.deserialize(text)
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize(("places", "minimum", "exclusive", "maximum"), BOUNDS)
def test_pattern_matches_exactly_the_accepted_strings(
    places: int, minimum: Decimal | None, exclusive: bool, maximum: Decimal | None
) -> None:
    field = DecimalString(
        places=places, minimum=minimum, minimum_exclusive=exclusive, maximum=maximum
    )
    pattern = re.compile(decimal_pattern(places, minimum, exclusive, maximum))
    disagreements = [
        text for text in CANDIDATES if bool(pattern.search(text)) != accepted(field, text)
    ]
    assert disagreements == []
    assert any(pattern.search(text) for text in CANDIDATES)


def test_request_fields_also_document_json_numbers_with_the_same_bounds() -> None:
    schema = decimal_schema(
        5, minimum=Decimal(0), minimum_exclusive=True, maximum=Decimal(10), accepts_numbers=True
    )
    text, number = schema["anyOf"]
    assert text["type"] == "string"
    assert number == {"type": "number", "multipleOf": 0.00001, "exclusiveMinimum": 0, "maximum": 10}


@pytest.mark.parametrize(
    ("minimum", "maximum"), [(Decimal(1), None), (Decimal(0), Decimal("2.5")), (None, Decimal(0))]
)
def test_bounds_a_pattern_cannot_express_are_refused(
    minimum: Decimal | None, maximum: Decimal | None
) -> None:
    with pytest.raises(ValueError, match="decimal_pattern"):
        decimal_pattern(5, minimum, False, maximum)
