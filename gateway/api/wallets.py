"""Wallets and their ledger entries (wallet transactions)."""

from __future__ import annotations

from typing import Any

from flask import g

from gateway import purchases, wallets
from gateway.api import api_v1
from gateway.api.auth import api_actor
from gateway.api.framework import Reply, endpoint
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

WALLET_WRITE_ERRORS = ("not_found", "wallet_is_terminated", "coupons_not_applicable")
CREDIT_ERRORS = ("amount_too_small", "amount_too_large", "payment_provider_unavailable",
                 "payment_provider_rejected")  # fmt: skip


@endpoint(
    api_v1, "/wallets", "POST",
    summary="Create the customer's wallet, with paid and/or granted credits",
    body=WalletCreateRequest, response=WalletCreateResponse, status=201,
    errors=["not_found", "no_active_subscription", "wallet_already_exists",
            "currency_mismatch", "coupons_not_applicable", *CREDIT_ERRORS],
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
)  # fmt: skip
def get_wallet(wallet_id: str) -> Reply:
    return Reply({"wallet": wallets.get_wallet(get_session(), wallet_id)})


@endpoint(
    api_v1, "/wallets", "GET",
    summary="List wallets, newest first", query=WalletListQuery, response=WalletListResponse,
    errors=["validation_errors"],
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
    errors=[*WALLET_WRITE_ERRORS, "amount_too_small", "amount_too_large",
            "payment_provider_unavailable"],
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
)  # fmt: skip
def terminate_wallet(wallet_id: str) -> Reply:
    wallet = wallets.terminate_wallet(get_session(), wallet_id, utcnow(), created_by=api_actor())
    return Reply({"wallet": wallet})


@endpoint(
    api_v1, "/wallet_transactions", "POST",
    summary="Top up a wallet with paid and/or granted credits",
    body=TopUpRequest, response=WalletTransactionsResponse, status=201,
    errors=[*WALLET_WRITE_ERRORS, *CREDIT_ERRORS],
)  # fmt: skip
def top_up(body: dict[str, Any]) -> Reply:
    data = body["wallet_transaction"]
    transactions = purchases.top_up(
        get_session(),
        data["wallet_id"],
        granted=data.get("granted_credits"),
        paid=data.get("paid_credits"),
        now=utcnow(),
        created_by=api_actor(),
        request_scope=g.get("idempotency_scope"),
    )
    return Reply({"wallet_transactions": transactions}, 201)


@endpoint(
    api_v1, "/wallet_transactions/<transaction_id>", "GET",
    summary="Get one ledger entry", response=WalletTransactionResponse, errors=["not_found"],
)  # fmt: skip
def get_wallet_transaction(transaction_id: str) -> Reply:
    entry = wallets.get_transaction(get_session(), transaction_id)
    return Reply({"wallet_transaction": entry})


@endpoint(
    api_v1, "/wallets/<wallet_id>/wallet_transactions", "GET",
    summary="List a wallet's ledger entries, newest first",
    query=WalletTransactionListQuery, response=WalletTransactionListResponse,
    errors=["not_found", "validation_errors"],
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
