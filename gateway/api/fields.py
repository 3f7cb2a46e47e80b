"""Marshmallow fields for exact decimals and UTC timestamps."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from flask import request
from marshmallow import ValidationError, fields

from gateway import money
from gateway.api.errors import ApiError

# Python refuses to turn longer digit strings into an int (CVE-2020-10735 guard).
_MAX_INT_DIGITS = 4000


def json_decimal(text: str) -> Decimal:
    """A JSON number with a fraction or exponent, exactly (never a binary float).

    An exponent beyond what `Decimal` can hold (1e9999999999999999999) becomes a signed
    infinity, which every numeric field then refuses as not finite.
    """
    try:
        return Decimal(text)
    except InvalidOperation:
        return Decimal("-Infinity") if text.startswith("-") else Decimal("Infinity")


def json_integer(text: str) -> int | Decimal:
    """A JSON integer; one too long for Python's int parser stays an exact `Decimal`
    (so a 5000-digit amount is answered "too large" by its field, not "invalid JSON")."""
    digits = len(text) - text.startswith("-")
    return int(text) if digits <= _MAX_INT_DIGITS else Decimal(text)


def _unstorable(text: str) -> bool:
    """NUL (refused by PostgreSQL text) or a lone surrogate (not encodable as UTF-8)."""
    if "\x00" in text:
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


# The OpenAPI pattern of text the API takes: anything but NUL. (Lone surrogates, the
# other unstorable text, cannot be written in a JSON Schema string at all.)
STORABLE_TEXT_PATTERN = "^[^\\u0000]*$"

_UNSTORABLE_MESSAGE = "must not contain NUL characters or unpaired UTF-16 surrogates"


def _unstorable_paths(payload: Any) -> list[tuple[str, ...]]:
    """Paths (keys, list indexes as strings) of every string no database can store.

    Iterative, so a body nested as deeply as the JSON parser allows cannot overflow
    the stack here.
    """
    found: list[tuple[str, ...]] = []
    stack: list[tuple[tuple[str, ...], Any]] = [((), payload)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if _unstorable(value):
                found.append(path)
        elif isinstance(value, dict):
            for key, item in value.items():
                if _unstorable(key):
                    found.append((*path, key))
                else:
                    stack.append(((*path, key), item))
        elif isinstance(value, list):
            stack.extend(((*path, str(index)), item) for index, item in enumerate(value))
    return found


def refuse_unstorable_text(payload: Any) -> None:
    """Refuse a request body with strings no database can store as text (422).

    Checked once on the parsed body, so every endpoint answers with a field map
    instead of the database driver failing later with a 500.
    """
    paths = _unstorable_paths(payload)
    if not paths:
        return
    details: dict[str, Any] = {}
    for path in paths:
        node = details
        for key in path[:-1]:
            child = node.setdefault(key, {})
            node = child if isinstance(child, dict) else {}
        node[path[-1] if path else "_schema"] = [_UNSTORABLE_MESSAGE]
    raise ApiError("validation_errors", "the request contains text that cannot be stored", details)


def refuse_nul_in_url() -> None:
    """`before_request` of the API: a NUL in a path segment or query value is a 422.

    URL decoding already replaces invalid UTF-8, but a `%00` would reach the database,
    where PostgreSQL refuses it with an error.
    """
    details: dict[str, Any] = {}
    for name, value in (request.view_args or {}).items():
        if isinstance(value, str) and "\x00" in value:
            details[name] = ["must not contain NUL characters"]
    for name, value in request.args.items(multi=True):
        if "\x00" in value or "\x00" in name:
            details[name] = ["must not contain NUL characters"]
    if details:
        raise ApiError("validation_errors", "the URL contains NUL characters", details)


# A decimal string as the API reads it: plain ASCII digits, an optional fraction, an
# optional minus sign. No exponent, no leading zeros, no spaces: one spelling per value,
# so that the OpenAPI pattern of each field says exactly which strings are accepted.
_PLAIN_DECIMAL = re.compile(r"(-?)(0|[1-9][0-9]*)(?:\.([0-9]+))?", re.ASCII)
_NOT_PLAIN = 'is not a valid decimal number: digits with an optional fraction, e.g. "12.50"'


def _digits_below(bound: int) -> list[str]:
    """Regex alternatives matching the integers 0 .. bound-1 written without leading zeros."""
    text = str(bound)
    alternatives = ["0"]
    if len(text) == 2:
        alternatives.append("[1-9]")
    elif len(text) > 2:
        alternatives.append(f"[1-9][0-9]{{0,{len(text) - 2}}}")
    for index, digit in enumerate(text):
        low, high = (1 if index == 0 else 0), int(digit) - 1
        if high < low:
            continue
        rest = len(text) - index - 1
        span = f"[{low}-{high}]" if high > low else str(low)
        alternatives.append(text[:index] + span + (f"[0-9]{{{rest}}}" if rest else ""))
    return alternatives


def decimal_pattern(
    places: int,
    minimum: Decimal | None = None,
    minimum_exclusive: bool = False,
    maximum: Decimal | None = None,
) -> str:
    """The regular expression of exactly the decimal strings `DecimalString` accepts.

    Supported bounds (all the API needs): a minimum of 0 (inclusive or exclusive) or none,
    and an integer maximum or none. Anything else is refused here, so a new field with
    other bounds fails the document's build instead of being described wrongly.
    """
    if minimum is not None and minimum != 0:
        raise ValueError(f"decimal_pattern: only a minimum of 0 is supported, not {minimum}")
    if maximum is not None and (maximum != maximum.to_integral_value() or maximum < 1):
        raise ValueError(f"decimal_pattern: the maximum must be an integer >= 1, not {maximum}")
    fraction = f"[0-9]{{1,{places}}}" if places else ""
    optional_fraction = f"(\\.{fraction})?" if places else ""
    if maximum is None:
        below = ["0", "[1-9][0-9]*"]
        at_maximum: list[str] = []
    else:
        below = _digits_below(int(maximum))
        zeros = f"(\\.0{{1,{places}}})?" if places else ""
        at_maximum = [f"{int(maximum)}{zeros}"]
    if minimum is not None and minimum_exclusive:
        # Everything below the maximum except the spellings of zero.
        positive = [alternative for alternative in below if alternative != "0"]
        alternatives = [f"({'|'.join(positive)}){optional_fraction}"] if positive else []
        if places:
            small = [
                "0" * zeros + "[1-9]" + (f"[0-9]{{0,{rest}}}" if rest else "")
                for zeros, rest in ((zeros, places - zeros - 1) for zeros in range(places))
            ]
            alternatives.append(f"0\\.({'|'.join(small)})")
    else:
        alternatives = [f"({'|'.join(below)}){optional_fraction}"]
    alternatives += at_maximum
    sign = "-?" if minimum is None else ""
    return f"^{sign}({'|'.join(alternatives)})$"


class DecimalString(fields.Field[Decimal]):
    """An exact decimal: accepted as a string or a JSON number, returned as a string.

    JSON numbers are parsed as `Decimal` (never `float`) by the request parser. Strings
    are plain notation (`decimal_pattern`). NaN, Infinity, booleans, too many decimal
    places and out-of-range values are refused. `openapi_schema()` describes exactly
    what is accepted (or, for an answer-only field, what is returned).
    """

    def __init__(
        self,
        *,
        places: int,
        minimum: Decimal | None = None,
        minimum_exclusive: bool = False,
        maximum: Decimal | None = None,
        formatter: Callable[[Decimal], str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.places = places
        self.minimum = minimum
        self.minimum_exclusive = minimum_exclusive
        self.maximum = maximum
        self.formatter = formatter

    def openapi_schema(self) -> dict[str, Any]:
        return decimal_schema(
            self.places,
            minimum=self.minimum,
            minimum_exclusive=self.minimum_exclusive,
            maximum=self.maximum,
            accepts_numbers=not self.dump_only,
        )

    def _serialize(self, value: Decimal | None, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        if value is None:
            return None
        if self.formatter is not None:
            return self.formatter(value)
        return f"{value:f}"

    def _below_minimum(self, number: Decimal, negative_sign: bool) -> str | None:
        if self.minimum is None:
            return None
        if self.minimum_exclusive and (number <= self.minimum or negative_sign):
            return f"must be greater than {self.minimum}"
        if not self.minimum_exclusive and (number < self.minimum or negative_sign):
            return f"must be at least {self.minimum}"
        return None

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> Decimal:
        negative_sign = False
        if isinstance(value, str):
            match = _PLAIN_DECIMAL.fullmatch(value)
            if match is None:
                if value.strip().lstrip("+-").lower() in ("nan", "snan", "inf", "infinity"):
                    raise ValidationError("must be a finite number")
                raise ValidationError(_NOT_PLAIN)
            # "-0" is a minus sign the pattern of a non-negative field does not allow.
            negative_sign = bool(match.group(1)) and self.minimum is not None and self.minimum >= 0
            if len(match.group(3) or "") > self.places:
                raise ValidationError(f"has at most {self.places} decimal places")
            number = Decimal(value)
        else:
            try:
                number = money.parse_decimal(value)
            except money.MoneyError as exc:
                raise ValidationError(str(exc)) from exc
        refusal = self._below_minimum(number, negative_sign)
        if refusal is not None:
            raise ValidationError(refusal)
        if self.maximum is not None and number > self.maximum:
            raise ValidationError(f"must be at most {self.maximum}")
        quantum = Decimal(1).scaleb(-self.places)
        try:
            quantized = number.quantize(quantum)
        except InvalidOperation as exc:  # more digits than the context holds
            raise ValidationError("is out of range") from exc
        if quantized != number:
            raise ValidationError(f"has at most {self.places} decimal places")
        return quantized


def decimal_schema(
    places: int,
    *,
    minimum: Decimal | None = None,
    minimum_exclusive: bool = False,
    maximum: Decimal | None = None,
    accepts_numbers: bool = False,
) -> dict[str, Any]:
    """The OpenAPI schema of a decimal: a string with its exact pattern and, where the
    field reads requests, the JSON number with the same bounds and step."""
    text: dict[str, Any] = {
        "type": "string",
        "format": "decimal",
        "pattern": decimal_pattern(places, minimum, minimum_exclusive, maximum),
    }
    if not accepts_numbers:
        return text
    number: dict[str, Any] = {"type": "number", "multipleOf": _step(places)}
    if minimum is not None:
        number["exclusiveMinimum" if minimum_exclusive else "minimum"] = _json_number(minimum)
    if maximum is not None:
        number["maximum"] = _json_number(maximum)
    return {"anyOf": [text, number]}


def _step(places: int) -> int | float:
    return 1 if places == 0 else float(Decimal(1).scaleb(-places))


def _json_number(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


class NullOnly(fields.Field[None]):
    """A field of Lago's request we accept but do not support: null (or absent) only;
    any other value is refused naming the field, never silently ignored."""

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> None:
        raise ValidationError("is not supported by this service: send null or leave it out")

    def openapi_schema(self) -> dict[str, Any]:
        return {"type": "null", "description": "Lago's field, not supported here: null only"}


class TrueOnly(fields.Field[bool]):
    """A Lago flag whose only behaviour here is `true` (null or absent means the same)."""

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> bool:
        if value is True:
            return True
        if value is False:
            raise ValidationError("only true is supported (it is this service's behaviour)")
        raise ValidationError("must be true or null")

    def openapi_schema(self) -> dict[str, Any]:
        return {"const": True}


class UTCDateTimeField(fields.DateTime):
    """ISO 8601 with a timezone on input; `YYYY-MM-DDTHH:MM:SSZ` (UTC) on output."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(format="iso", **kwargs)

    def _serialize(self, value: datetime | None, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        if value is None:
            return None
        return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> datetime:
        parsed = super()._deserialize(value, attr, data, **kwargs)
        if parsed.tzinfo is None:
            raise ValidationError("must include a timezone (e.g. 2027-01-01T00:00:00Z)")
        try:
            return parsed.astimezone(UTC)
        except OverflowError as exc:  # 0001-01-01T00:00:00+01:00 is before year 1 in UTC
            raise ValidationError("is out of range") from exc
