"""Marshmallow fields for exact decimals and UTC timestamps."""

from __future__ import annotations

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


class DecimalString(fields.Field[Decimal]):
    """An exact decimal: accepted as a string or a JSON number, returned as a string.

    JSON numbers are parsed as `Decimal` (never `float`) by the request parser. NaN,
    Infinity, booleans, too many decimal places and out-of-range values are refused.
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

    def _serialize(self, value: Decimal | None, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        if value is None:
            return None
        if self.formatter is not None:
            return self.formatter(value)
        return f"{value:f}"

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> Decimal:
        try:
            number = money.parse_decimal(value)
        except money.MoneyError as exc:
            raise ValidationError(str(exc)) from exc
        if self.minimum is not None:
            if self.minimum_exclusive and number <= self.minimum:
                raise ValidationError(f"must be greater than {self.minimum}")
            if not self.minimum_exclusive and number < self.minimum:
                raise ValidationError(f"must be at least {self.minimum}")
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
