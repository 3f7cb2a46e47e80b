"""Domain errors: a code the API maps to an HTTP status in one table (api/errors.py)."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """A use case refused: `code` is part of the contract, `message` is for people."""

    code = "domain_error"

    def __init__(
        self, message: str, *, code: str | None = None, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.details = details or {}


class NotFound(DomainError):
    code = "not_found"


class ValidationFailed(DomainError):
    """Input that passed the schema but breaks a domain rule (field map in details)."""

    code = "validation_errors"


class NoActiveSubscription(DomainError):
    code = "no_active_subscription"


class WalletAlreadyExists(DomainError):
    code = "wallet_already_exists"


class WalletIsTerminated(DomainError):
    code = "wallet_is_terminated"


class CouponsNotApplicable(DomainError):
    code = "coupons_not_applicable"


class AmountTooSmall(DomainError):
    code = "amount_too_small"


class AmountTooLarge(DomainError):
    code = "amount_too_large"


class CurrencyMismatch(DomainError):
    code = "currency_mismatch"


class PaymentProviderUnavailable(DomainError):
    code = "payment_provider_unavailable"


class PaymentProviderRejected(DomainError):
    code = "payment_provider_rejected"


class IdempotencyKeyReused(DomainError):
    code = "idempotency_key_reused"


class IdempotencyKeyInProgress(DomainError):
    code = "idempotency_key_in_progress"
