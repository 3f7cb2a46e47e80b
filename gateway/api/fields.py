"""Marshmallow fields for exact decimals and UTC timestamps."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from marshmallow import ValidationError, fields

from gateway import money


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
        if number.quantize(quantum) != number:
            raise ValidationError(f"has at most {self.places} decimal places")
        return number.quantize(quantum)


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
        return parsed.astimezone(UTC)
