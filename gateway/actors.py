"""Who made a ledger entry: the `created_by` of a wallet transaction.

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


def operator(name: str) -> str:
    """`operator:NAME`, for an entry made in the console."""
    return f"operator:{name}"


def api(label: str) -> str:
    """`api:LABEL`, for an entry made through the API with the key labelled LABEL."""
    return f"api:{label}"
