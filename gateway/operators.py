"""Operators: the people who sign in to the console.

Passwords are stored as werkzeug hashes (`generate_password_hash`); a disabled
operator can no longer sign in, and a session already open stops at its next request.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from gateway import actors
from gateway.errors import DomainError, NotFound, ValidationFailed
from gateway.models import Operator

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024
# Checked when the name is unknown, so a wrong name costs as long as a wrong password.
_UNKNOWN_OPERATOR_HASH = generate_password_hash("no operator has this password")


class OperatorExists(DomainError):
    code = "operator_exists"


def create_operator(session: Session, name: str, password: str, now: datetime) -> Operator:
    """A new operator, active, with a hash of `password`."""
    if not actors.is_valid_name(name):
        raise ValidationFailed(
            "an operator name is 1-64 letters, digits or `_ . @ -`",
            details={"name": ["must be 1-64 letters, digits or _ . @ -"]},
        )
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise ValidationFailed(
            f"a password has {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters",
            details={"password": [f"must have at least {MIN_PASSWORD_LENGTH} characters"]},
        )
    operator = Operator(
        name=name,
        password_hash=generate_password_hash(password),
        disabled_at=None,
        created_at=now,
    )
    try:
        with session.begin_nested():
            session.add(operator)
    except IntegrityError as exc:
        raise OperatorExists(
            f"an operator named {name} already exists", details={"name": ["already exists"]}
        ) from exc
    return operator


def disable_operator(session: Session, name: str, now: datetime) -> Operator:
    """Stop `name` from signing in (its open sessions end at their next request)."""
    operator = find_operator(session, name)
    if operator is None:
        raise NotFound(f"no operator is named {name}", details={"name": ["not_found"]})
    if operator.disabled_at is None:
        operator.disabled_at = now
        session.flush()
    return operator


def find_operator(session: Session, name: str) -> Operator | None:
    return session.execute(select(Operator).where(Operator.name == name)).scalar_one_or_none()


def authenticate(session: Session, name: str, password: str, now: datetime) -> Operator | None:
    """The active operator `name` if `password` is theirs, else None (whatever was wrong)."""
    operator = find_operator(session, name) if actors.is_valid_name(name) else None
    if operator is None:
        check_password_hash(_UNKNOWN_OPERATOR_HASH, password)
        return None
    if not check_password_hash(operator.password_hash, password) or not operator.is_active:
        return None
    operator.last_sign_in_at = now
    session.flush()
    return operator
