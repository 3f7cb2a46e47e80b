"""The seed's screens: Customers, a customer's Wallets, the wallet forms, Attention.

Reads go straight to the tables; every change goes through the use case the API
calls (`gateway.purchases`, `gateway.wallets`), with the same schema checking the
values (`gateway.api.schemas`), so the console and the API keep one set of rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from flask import flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from marshmallow import Schema, ValidationError
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, selectinload

from gateway import ledger, money, purchases, wallets
from gateway.api.schemas import WalletCreateSchema, WalletUpdateSchema, credits_field
from gateway.console import console, once
from gateway.console.auth import operator_actor, operator_principal
from gateway.db import get_session, utcnow
from gateway.errors import (
    DomainError,
    IdempotencyKeyInProgress,
    IdempotencyKeyReused,
    NotFound,
)
from gateway.models import (
    Customer,
    EntryStatus,
    Purchase,
    PurchaseStatus,
    TransactionStatus,
    TransactionType,
    Wallet,
    WalletStatus,
    WalletTransaction,
)

PER_PAGE = 20
# Purchases a person must look at, and what the console calls them; a purchase whose
# refund took back credits already spent (`shortfall_credits`) is a "Refund shortfall".
ATTENTION = {
    PurchaseStatus.REFUND_REQUIRED: "Refund required",
    PurchaseStatus.REVIEW_REQUIRED: "Review required",
}
REFUND_SHORTFALL = "Refund shortfall"
# The API's field names, as the console's labels say them.
_PLAIN_WORDS = {
    "paid_credits": "credits to be purchased",
    "granted_credits": "credits granted for free",
    "rate_amount": "credit value",
    "expiration_at": "expiration date",
}
# Form fields whose refusals are shown next to them; anything else goes above the form.
_FIELD_ALIASES = {"external_customer_id": "_form", "wallet": "_form", "setting": "_form"}


# --- helpers for the templates -----------------------------------------------------


@console.app_template_filter("credits")
def _credits(value: Decimal | None) -> str:
    return "" if value is None else money.format_credits(value)


@console.app_template_filter("moment")
def _moment(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def safe_link(url: str | None) -> str | None:
    """Only http(s) links are shown: a provider's URL never becomes `javascript:`."""
    if not url:
        return None
    return url if urlsplit(url).scheme in ("http", "https") else None


@console.app_template_global("minor")
def _minor(cents: int | None, currency: str) -> str:
    return "" if cents is None else money.format_minor(cents, currency)


@console.app_template_global("amount")
def _amount(value: Decimal, currency: str) -> str:
    return f"{money.format_amount(value, currency)} {currency}"


@dataclass
class Page:
    number: int
    total: int
    per_page: int = PER_PAGE

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))

    @property
    def offset(self) -> int:
        return (self.number - 1) * self.per_page


def _page_number() -> int:
    raw = request.args.get("page", "1")
    return int(raw) if raw.isdigit() and 0 < int(raw) <= 1_000_000 else 1


@dataclass
class FormState:
    """What a form shows: the values typed, the errors by field, a one-time token."""

    values: dict[str, str]
    errors: dict[str, list[str]]
    token: str

    @classmethod
    def blank(cls, **values: str) -> FormState:
        return cls(values=dict(values), errors={}, token=once.new_token())

    @classmethod
    def submitted(cls, fields: tuple[str, ...]) -> FormState:
        values = {name: request.form.get(name, "") for name in fields}
        return cls(values=values, errors={}, token=request.form.get(once.TOKEN_FIELD, ""))

    def refuse(self, exc: Exception) -> None:
        """Put a refusal's messages next to their fields (the form's top for the rest)."""
        if isinstance(exc, ValidationError):
            messages: Any = exc.messages
            details = messages if isinstance(messages, dict) else {"_form": messages}
            for name, problems in details.items():
                self._add(name, problems)
            return
        assert isinstance(exc, DomainError)
        if isinstance(exc, IdempotencyKeyReused):
            self._add("_form", ["This form was already sent with other values. "
                                "Open the page again to start over."])  # fmt: skip
            self.token = once.new_token()
            return
        if isinstance(exc, IdempotencyKeyInProgress):
            self._add("_form", ["This form is still being processed. Wait a moment."])
            return
        placed = False
        for name, problems in exc.details.items():
            if name in self.values:
                self._add(name, problems)
                placed = True
        if not placed or any(name not in self.values for name in exc.details):
            self._add("_form", [exc.message])

    def _add(self, name: str, problems: Any) -> None:
        name = _FIELD_ALIASES.get(name, name)
        if name not in self.values and name != "_form":
            name = "_form"
        items = problems if isinstance(problems, list) else [problems]
        self.errors.setdefault(name, []).extend(_plain(str(item)) for item in items)


def _plain(message: str) -> str:
    for api_name, words in _PLAIN_WORDS.items():
        message = message.replace(api_name, words)
    return message


def _load(schema: Schema, data: dict[str, Any]) -> dict[str, Any]:
    loaded: dict[str, Any] = schema.load(data)
    return loaded


def _optional(values: dict[str, str], name: str) -> str | None:
    value = values.get(name, "").strip()
    return value or None


def _expiration(values: dict[str, str]) -> str | None:
    """The date field as the API's `expiration_at`: the end of that day, UTC."""
    raw = _optional(values, "expiration_date")
    if raw is None:
        return None
    try:
        day = date.fromisoformat(raw)
    except ValueError as exc:
        raise ValidationError({"expiration_date": ["must be a date (YYYY-MM-DD)"]}) from exc
    return datetime.combine(day, time(23, 59, 59), tzinfo=UTC).isoformat()


def _rename(exc: ValidationError, names: dict[str, str]) -> ValidationError:
    messages: Any = exc.messages
    if not isinstance(messages, dict):
        return exc
    return ValidationError({names.get(key, key): value for key, value in messages.items()})


def _date_value(moment: datetime | None) -> str:
    return "" if moment is None else moment.astimezone(UTC).date().isoformat()


# --- Customers -----------------------------------------------------------------------


@console.route("/")
def index() -> ResponseReturnValue:
    return redirect(url_for("console.customers"))


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


@console.route("/customers")
def customers() -> ResponseReturnValue:
    session = get_session()
    search = request.args.get("q", "").strip()[:255]
    query = select(Customer)
    if search:
        pattern = _like(search.lower())
        query = query.where(
            or_(
                func.lower(Customer.external_id).like(pattern, escape="\\"),
                func.lower(Customer.name).like(pattern, escape="\\"),
            )
        )
    total = session.execute(select(func.count()).select_from(query.subquery())).scalar_one()
    page = Page(_page_number(), int(total))
    rows = session.execute(
        query.order_by(Customer.created_at.desc(), Customer.id.desc())
        .limit(page.per_page)
        .offset(page.offset)
    ).scalars()
    return render_template("console/customers.html", customers=list(rows), search=search, page=page)


def _customer(session: Session, external_id: str) -> Customer:
    customer = session.execute(
        select(Customer).where(Customer.external_id == external_id)
    ).scalar_one_or_none()
    if customer is None:
        raise NotFound(f"customer {external_id} does not exist")
    return customer


@dataclass
class WalletView:
    wallet: Wallet
    pending_credits: Decimal

    @property
    def balance_cents(self) -> int:
        return money.balance_minor(
            self.wallet.credits_balance, self.wallet.rate_amount, self.wallet.currency
        )


@console.route("/customers/<path:external_id>")
def customer(external_id: str) -> ResponseReturnValue:
    session = get_session()
    found = _customer(session, external_id)
    all_wallets = list(
        session.execute(
            select(Wallet)
            .where(Wallet.customer_id == found.id)
            .order_by(Wallet.created_at.desc(), Wallet.id.desc())
        ).scalars()
    )
    active = next((w for w in all_wallets if w.status == WalletStatus.ACTIVE), None)
    terminated = [w for w in all_wallets if w.status != WalletStatus.ACTIVE]
    active_view = None
    entries: list[WalletTransaction] = []
    page = Page(1, 0)
    if active is not None:
        pending = session.execute(
            select(func.coalesce(func.sum(WalletTransaction.credit_amount), 0)).where(
                WalletTransaction.wallet_id == active.id,
                WalletTransaction.status == EntryStatus.PENDING,
                WalletTransaction.transaction_type == TransactionType.INBOUND,
            )
        ).scalar_one()
        active_view = WalletView(active, Decimal(pending))
        entries, total = wallets.list_transactions(
            session,
            active.id,
            status=None,
            transaction_status=None,
            page=_page_number(),
            per_page=PER_PAGE,
        )
        page = Page(_page_number(), total)
        ids = [entry.id for entry in entries]
        if ids:  # their invoices, in one query
            session.execute(
                select(WalletTransaction)
                .where(WalletTransaction.id.in_(ids))
                .options(selectinload(WalletTransaction.purchase))
            ).all()
    return render_template(
        "console/customer.html",
        customer=found,
        active=active_view,
        entries=entries,
        page=page,
        terminated=terminated,
        now=utcnow(),
        safe_link=safe_link,
        TransactionStatus=TransactionStatus,
    )


# --- Add a wallet & credits ---------------------------------------------------------

_WALLET_FIELDS = ("name", "rate_amount", "paid_credits", "granted_credits", "expiration_date")


@console.route("/customers/<path:external_id>/wallets/new", methods=["GET", "POST"])
def add_wallet(external_id: str) -> ResponseReturnValue:
    session = get_session()
    found = _customer(session, external_id)
    if request.method == "GET":
        form = FormState.blank()
        return render_template("console/add_wallet.html", customer=found, form=form)
    form = FormState.submitted(_WALLET_FIELDS)

    def act(scope: purchases.RequestScope) -> once.Done:
        values = form.values
        try:
            data = _load(
                WalletCreateSchema(),
                {
                    "external_customer_id": found.external_id,
                    "rate_amount": values["rate_amount"].strip(),
                    "name": _optional(values, "name"),
                    "paid_credits": _optional(values, "paid_credits"),
                    "granted_credits": _optional(values, "granted_credits"),
                    "expiration_at": _expiration(values),
                },
            )
        except ValidationError as exc:
            raise _rename(exc, {"expiration_at": "expiration_date"}) from exc
        purchases.create_wallet(
            session,
            wallets.WalletInput(**data),
            utcnow(),
            created_by=operator_actor(),
            request_scope=scope,
        )
        return once.Done(
            url_for("console.customer", external_id=found.external_id), "Wallet added."
        )

    return _submit(form, act, "console/add_wallet.html", customer=found)


def _submit(form: FormState, act: Any, template: str, **context: Any) -> ResponseReturnValue:
    """Run the form's operation once; on a refusal, the form again with its errors."""
    try:
        done = once.act_once(get_session(), operator_principal(), act)
    except (DomainError, ValidationError) as exc:
        if isinstance(exc, NotFound) and not exc.details:
            raise
        form.refuse(_rename_expiry(exc))
        return render_template(template, form=form, **context), 422
    flash(done.message)
    return redirect(done.location, 303)


def _rename_expiry(exc: Exception) -> Exception:
    if isinstance(exc, DomainError) and "expiration_at" in exc.details:
        exc.details["expiration_date"] = exc.details.pop("expiration_at")
    return exc


# --- Edit wallet -------------------------------------------------------------------------


def _wallet(session: Session, wallet_id: str) -> Wallet:
    return wallets.get_wallet(session, wallet_id)


def _usable_or_page(wallet: Wallet) -> ResponseReturnValue | None:
    """Edit forms are not offered for a wallet that ended: the page says why instead."""
    if wallet.is_usable(utcnow()):
        return None
    return render_template("console/wallet_ended.html", wallet=wallet), 409


@console.route("/wallets/<wallet_id>/edit")
def edit_wallet(wallet_id: str) -> ResponseReturnValue:
    wallet = _wallet(get_session(), wallet_id)
    return _usable_or_page(wallet) or render_template("console/edit_wallet.html", wallet=wallet)


_TOP_UP_FIELDS = ("paid_credits", "granted_credits")


@console.route("/wallets/<wallet_id>/top-up", methods=["GET", "POST"])
def top_up(wallet_id: str) -> ResponseReturnValue:
    session = get_session()
    wallet = _wallet(session, wallet_id)
    if request.method == "GET":
        return _usable_or_page(wallet) or render_template(
            "console/top_up.html", wallet=wallet, form=FormState.blank()
        )
    form = FormState.submitted(_TOP_UP_FIELDS)
    external_id = wallet.customer.external_id

    def act(scope: purchases.RequestScope) -> once.Done:
        field = credits_field(allow_none=True)
        loaded: dict[str, Decimal | None] = {}
        problems: dict[str, list[str]] = {}
        for name in _TOP_UP_FIELDS:
            raw = _optional(form.values, name)
            try:
                loaded[name] = None if raw is None else field.deserialize(raw)
            except ValidationError as exc:
                problems[name] = list(exc.messages)
        if problems:
            raise ValidationError(problems)
        purchases.top_up(
            session,
            wallet_id,
            granted=loaded["granted_credits"],
            paid=loaded["paid_credits"],
            now=utcnow(),
            created_by=operator_actor(),
            request_scope=scope,
        )
        return once.Done(url_for("console.customer", external_id=external_id), "Credits added.")

    return _submit(form, act, "console/top_up.html", wallet=wallet)


_INFORMATION_FIELDS = ("name", "expiration_date")


@console.route("/wallets/<wallet_id>/information", methods=["GET", "POST"])
def edit_information(wallet_id: str) -> ResponseReturnValue:
    session = get_session()
    wallet = _wallet(session, wallet_id)
    if request.method == "GET":
        form = FormState.blank(
            name=wallet.name or "", expiration_date=_date_value(wallet.expiration_at)
        )
        return _usable_or_page(wallet) or render_template(
            "console/edit_information.html", wallet=wallet, form=form
        )
    form = FormState.submitted(_INFORMATION_FIELDS)
    external_id = wallet.customer.external_id

    def act(_scope: purchases.RequestScope) -> once.Done:
        try:
            data = _load(
                WalletUpdateSchema(),
                {
                    "name": _optional(form.values, "name"),
                    "expiration_at": _expiration(form.values),
                },
            )
        except ValidationError as exc:
            raise _rename(exc, {"expiration_at": "expiration_date"}) from exc
        wallets.update_wallet(session, wallet_id, now=utcnow(), **data)
        return once.Done(
            url_for("console.customer", external_id=external_id), "Wallet information saved."
        )

    return _submit(form, act, "console/edit_information.html", wallet=wallet)


@console.route("/wallets/<wallet_id>/terminate", methods=["GET", "POST"])
def terminate(wallet_id: str) -> ResponseReturnValue:
    session = get_session()
    wallet = _wallet(session, wallet_id)
    if request.method == "GET":
        return _usable_or_page(wallet) or render_template(
            "console/terminate.html", wallet=wallet, form=FormState.blank()
        )
    form = FormState.submitted(())
    external_id = wallet.customer.external_id

    def act(_scope: purchases.RequestScope) -> once.Done:
        # The API answers a repeated DELETE with the terminated wallet; a form for a
        # wallet that already ended is refused, as the other edits are.
        wallets.ensure_usable(ledger.lock_wallet(session, wallet_id), utcnow())
        purchases.terminate_wallet(session, wallet_id, utcnow(), created_by=operator_actor())
        return once.Done(url_for("console.customer", external_id=external_id), "Wallet terminated.")

    return _submit(form, act, "console/terminate.html", wallet=wallet)


# --- Attention ------------------------------------------------------------------------


@console.route("/attention")
def attention() -> ResponseReturnValue:
    session = get_session()
    query = select(Purchase).where(
        or_(Purchase.status.in_(list(ATTENTION)), Purchase.shortfall_credits > 0)
    )
    total = session.execute(select(func.count()).select_from(query.subquery())).scalar_one()
    page = Page(_page_number(), int(total))
    rows = session.execute(
        query.options(selectinload(Purchase.customer), selectinload(Purchase.wallet))
        .order_by(Purchase.updated_at.desc(), Purchase.id.desc())
        .limit(page.per_page)
        .offset(page.offset)
    ).scalars()
    return render_template(
        "console/attention.html", purchases=list(rows), page=page, labels=ATTENTION,
        shortfall=REFUND_SHORTFALL, safe_link=safe_link, now=utcnow(),
    )  # fmt: skip


@console.errorhandler(NotFound)
def _not_found(exc: NotFound) -> ResponseReturnValue:
    return render_template("console/message.html", title="Not found", message=exc.message), 404
