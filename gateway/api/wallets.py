"""Wallets and their ledger entries (wallet transactions)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from flask import g

from gateway import ledger, purchases, wallets
from gateway.api import api_v1
from gateway.api.auth import api_actor
from gateway.api.framework import Link, Reply, endpoint
from gateway.api.schemas import (
    TopUpRequest,
    WalletCreateRequest,
    WalletCreateResponse,
    WalletListQuery,
    WalletListResponse,
    WalletResponse,
    WalletTransactionListQuery,
    WalletTransactionListResponse,
    WalletTransactionResponse,
    WalletTransactionsResponse,
    WalletUpdateRequest,
    pagination_meta,
)
from gateway.db import get_session, utcnow
from gateway.models import WalletTransaction


def _wallet_links(wallet: str, *, terminated: bool = False) -> dict[str, Link]:
    """What a client does next with a wallet found at JSON pointer `wallet` of an answer
    (a terminated wallet can only be read)."""
    wallet_id = f"$response.body#{wallet}/id"
    links = {
        "GetWallet": Link("get_wallet", "The wallet", parameters={"wallet_id": wallet_id}),
        "UpdateWallet": Link(
            "update_wallet", "Rename it or change its expiration",
            parameters={"wallet_id": wallet_id},
            request_body={"wallet": {"name": "Renamed", "expiration_at": None}},
        ),
        "TerminateWallet": Link(
            "terminate_wallet", "Terminate it", parameters={"wallet_id": wallet_id}
        ),
        "TopUp": Link(
            "top_up", "Grant it credits",
            request_body={"wallet_transaction": {
                "wallet_id": wallet_id, "granted_credits": "5", "paid_credits": None,
            }},
        ),
        "ListWalletTransactions": Link(
            "list_wallet_transactions", "Its ledger", parameters={"wallet_id": wallet_id}
        ),
        "ListCustomerWallets": Link(
            "list_wallets", "The customer's wallets",
            parameters={
                "external_customer_id": f"$response.body#{wallet}/external_customer_id"
            },
        ),
        "ApplyCredits": Link(
            "apply_credits", "Spend its credits on an invoice",
            request_body={"credit_application": {
                "invoice_external_id": f"$response.body#{wallet}/id",
                "external_customer_id": f"$response.body#{wallet}/external_customer_id",
                "invoice_type": "subscription",
                "currency": f"$response.body#{wallet}/currency",
                "subtotal_amount_cents": 1250,
                "tax_rate": "20",
            }},
        ),
    }  # fmt: skip
    if terminated:
        return {name: links[name] for name in ("GetWallet", "ListWalletTransactions")}
    return links


def _transaction_links(transaction: str) -> dict[str, Link]:
    return {
        "GetWalletTransaction": Link(
            "get_wallet_transaction", "The ledger entry",
            parameters={"transaction_id": f"$response.body#{transaction}/id"},
        ),
        "GetTransactionWallet": Link(
            "get_wallet", "Its wallet",
            parameters={"wallet_id": f"$response.body#{transaction}/wallet_id"},
        ),
    }  # fmt: skip


WALLET_WRITE_ERRORS = ("not_found", "wallet_is_terminated", "coupons_not_applicable")
CREDIT_ERRORS = ("amount_too_small", "amount_too_large", "payment_provider_unavailable",
                 "payment_provider_rejected")  # fmt: skip


@endpoint(
    api_v1, "/wallets", "POST",
    summary="Create the customer's wallet, with paid and/or granted credits",
    body=WalletCreateRequest, response=WalletCreateResponse, status=201,
    errors=["not_found", "no_active_subscription", "wallet_already_exists",
            "currency_mismatch", "coupons_not_applicable", "validation_errors", *CREDIT_ERRORS],
    links={**_wallet_links("/wallet"), **_transaction_links("/wallet_transactions/0")},
)  # fmt: skip
def create_wallet(body: dict[str, Any]) -> Reply:
    result = purchases.create_wallet(
        get_session(),
        wallets.WalletInput(**body["wallet"]),
        utcnow(),
        created_by=api_actor(),
        request_scope=g.get("idempotency_scope"),
    )
    return Reply({"wallet": result.wallet, "wallet_transactions": result.transactions}, 201)


@endpoint(
    api_v1, "/wallets/<wallet_id>", "GET",
    summary="Get a wallet", response=WalletResponse, errors=["not_found"],
    links=_wallet_links("/wallet"),
)  # fmt: skip
def get_wallet(wallet_id: str) -> Reply:
    return Reply({"wallet": wallets.get_wallet(get_session(), wallet_id)})


@endpoint(
    api_v1, "/wallets", "GET",
    summary="List wallets, newest first", query=WalletListQuery, response=WalletListResponse,
    errors=["validation_errors"], links=_wallet_links("/wallets/0"),
)  # fmt: skip
def list_wallets(query: dict[str, Any]) -> Reply:
    rows, total = wallets.list_wallets(
        get_session(),
        external_customer_id=query.get("external_customer_id"),
        status=query.get("status"),
        page=query["page"],
        per_page=query["per_page"],
    )
    return Reply(
        {"wallets": rows, "meta": pagination_meta(query["page"], query["per_page"], total)}
    )


@endpoint(
    api_v1, "/wallets/<wallet_id>", "PUT",
    summary="Change a wallet's name, expiration, low-balance threshold (null removes "
            "them) or automatic top-up rules (the list replaces them; [] removes them)",
    body=WalletUpdateRequest, response=WalletResponse,
    errors=[*WALLET_WRITE_ERRORS, "validation_errors", "amount_too_small", "amount_too_large",
            "payment_provider_unavailable"],
    links=_wallet_links("/wallet"),
)  # fmt: skip
def update_wallet(wallet_id: str, body: dict[str, Any]) -> Reply:
    wallet = wallets.update_wallet(
        get_session(),
        wallet_id,
        now=utcnow(),
        provider=purchases.configured_provider,
        **body["wallet"],
    )
    return Reply({"wallet": wallet})


@endpoint(
    api_v1, "/wallets/<wallet_id>", "DELETE",
    summary="Terminate a wallet, voiding its remaining credits (cannot be undone)",
    response=WalletResponse, errors=["not_found"],
    links=_wallet_links("/wallet", terminated=True),
)  # fmt: skip
def terminate_wallet(wallet_id: str) -> Reply:
    wallet = purchases.terminate_wallet(get_session(), wallet_id, utcnow(), created_by=api_actor())
    return Reply({"wallet": wallet})


@endpoint(
    api_v1, "/wallet_transactions", "POST",
    summary="Top up a wallet with paid and/or granted credits",
    body=TopUpRequest, response=WalletTransactionsResponse, status=201,
    errors=[*WALLET_WRITE_ERRORS, "validation_errors", *CREDIT_ERRORS],
    links=_transaction_links("/wallet_transactions/0"),
)  # fmt: skip
def top_up(body: dict[str, Any]) -> Reply:
    data = body["wallet_transaction"]
    session, now = get_session(), utcnow()
    granted, paid = data.get("granted_credits"), data.get("paid_credits")
    voided: Decimal | None = data.get("voided_credits")
    if voided is not None:
        # Checked before any purchase is made, so that a refusal leaves nothing behind.
        wallet = wallets.get_wallet(session, data["wallet_id"])
        wallets.ensure_usable(wallet, now)
        wallets.refuse_void_beyond(wallet.credits_balance + (granted or 0), voided)
    transactions: list[WalletTransaction] = []
    with ledger.labelled(session, ledger.EntryLabel(data.get("name"), data.get("metadata"))):
        if granted is not None or paid is not None or voided is None:
            transactions = purchases.top_up(
                session,
                data["wallet_id"],
                granted=granted,
                paid=paid,
                now=now,
                created_by=api_actor(),
                request_scope=g.get("idempotency_scope"),
            )
        if voided is not None:
            # After the purchase, so that a retry resuming it does not void twice.
            transactions.append(
                wallets.void_credits(
                    session, data["wallet_id"], voided, now, created_by=api_actor()
                )
            )
    return Reply({"wallet_transactions": transactions}, 201)


@endpoint(
    api_v1, "/wallet_transactions/<transaction_id>", "GET",
    summary="Get one ledger entry", response=WalletTransactionResponse, errors=["not_found"],
    links=_transaction_links("/wallet_transaction"),
)  # fmt: skip
def get_wallet_transaction(transaction_id: str) -> Reply:
    entry = wallets.get_transaction(get_session(), transaction_id)
    return Reply({"wallet_transaction": entry})


@endpoint(
    api_v1, "/wallets/<wallet_id>/wallet_transactions", "GET",
    summary="List a wallet's ledger entries, newest first",
    query=WalletTransactionListQuery, response=WalletTransactionListResponse,
    errors=["not_found", "validation_errors"], links=_transaction_links("/wallet_transactions/0"),
)  # fmt: skip
def list_wallet_transactions(wallet_id: str, query: dict[str, Any]) -> Reply:
    rows, total = wallets.list_transactions(
        get_session(),
        wallet_id,
        status=query.get("status"),
        transaction_status=query.get("transaction_status"),
        page=query["page"],
        per_page=query["per_page"],
    )
    meta = pagination_meta(query["page"], query["per_page"], total)
    return Reply({"wallet_transactions": rows, "meta": meta})
