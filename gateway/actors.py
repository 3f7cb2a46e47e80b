"""Who made a ledger entry: the `created_by` of a wallet transaction (and whose
request claimed an idempotency key: its principal, below).

- `operator:NAME`: an operator, in the console;
- `api:LABEL`: a caller of the API, by the label of its key (`GATEWAY_API_KEYS`
  entries `LABEL=key`; a bare key's label is `default`);
- `system`: the service on its own (the expiry sweep, the worker).
"""

from __future__ import annotations

import re

SYSTEM = "system"
DEFAULT_API_KEY_LABEL = "default"
# Labels and operator names: short, printable, no separators that could be confused.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
MAX_LENGTH = 100  # the column's width: "operator:" + a 64-character name fits


def is_valid_name(name: str) -> bool:
    """An operator name or API key label: 1-64 of letters, digits, `_ . @ -`."""
    return NAME_PATTERN.fullmatch(name) is not None


# Idempotency principals (whose Idempotency-Key or console form token a request
# claimed; a purchase's `request_key` begins with it): an API key's `principal_of`, a
# digest without a colon, or a console operator's `operator:ID`.
OPERATOR_PRINCIPAL_PREFIX = "operator:"


def operator_principal(operator_id: str) -> str:
    """The idempotency principal of console operator `operator_id`."""
    return f"{OPERATOR_PRINCIPAL_PREFIX}{operator_id}"


def api_principal_of_request(request_key: str) -> str | None:
    """The API key principal whose request opened a purchase with `request_key`
    (`PRINCIPAL:KEY:purchase:N`), or None if an operator opened it in the console."""
    if request_key.startswith(OPERATOR_PRINCIPAL_PREFIX):
        return None
    return request_key.partition(":")[0]


def operator(name: str) -> str:
    """`operator:NAME`, for an entry made in the console."""
    return f"operator:{name}"


def api(label: str) -> str:
    """`api:LABEL`, for an entry made through the API with the key labelled LABEL."""
    return f"api:{label}"
