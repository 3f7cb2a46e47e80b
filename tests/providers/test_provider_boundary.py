"""The boundaries the code keeps: Stripe's objects are read only behind
`gateway/providers/`, and purchase statuses change only in `gateway/transitions.py`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from gateway.settings import PROJECT_ROOT

GATEWAY = PROJECT_ROOT / "gateway"
# The Stripe endpoint verifies Stripe's signature: it is the provider's door.
_STRIPE_DOOR = GATEWAY / "api" / "webhooks.py"


def _modules_outside_providers() -> list[Path]:
    return [
        path
        for path in sorted(GATEWAY.rglob("*.py"))
        if (GATEWAY / "providers") not in path.parents and path != _STRIPE_DOOR
    ]


def _imported_modules(tree: ast.AST) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize("path", _modules_outside_providers(), ids=lambda p: p.name)
def test_the_domain_imports_nothing_of_stripe(path: Path) -> None:
    imported = _imported_modules(ast.parse(path.read_text()))
    stripe_modules = {
        name
        for name in imported
        if name == "stripe"
        or name.startswith("stripe.")
        or name.startswith("gateway.providers.stripe")
    }
    assert stripe_modules == set(), f"{path.name} reads Stripe directly: {stripe_modules}"


def _status_writes(tree: ast.AST) -> list[int]:
    """Lines that set a purchase's status (`x.status = PurchaseStatus.…`, or a
    `status=PurchaseStatus.…` keyword) to anything but `creating`."""

    def is_purchase_status(value: ast.AST) -> bool:
        return (
            isinstance(value, ast.Attribute)
            and isinstance(value.value, ast.Name)
            and value.value.id == "PurchaseStatus"
            and value.attr != "CREATING"
        )

    lines: list[int] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and is_purchase_status(node.value):
            if any(isinstance(t, ast.Attribute) and t.attr == "status" for t in node.targets):
                lines.append(node.lineno)
        elif (
            isinstance(node, ast.keyword)
            and node.arg == "status"
            and is_purchase_status(node.value)
        ):
            lines.append(node.value.lineno)
    return lines


@pytest.mark.parametrize(
    "path",
    [p for p in sorted(GATEWAY.rglob("*.py")) if p.name != "transitions.py"],
    ids=lambda p: str(p.relative_to(GATEWAY)),
)
def test_only_the_transitions_module_changes_a_purchase_status(path: Path) -> None:
    assert _status_writes(ast.parse(path.read_text())) == []


_INVOICE_STATUS_WORDS = {"draft", "open", "paid", "void", "uncollectible"}


def test_invoice_statuses_are_compared_as_the_enum() -> None:
    """Outside the provider, an invoice status is compared with `InvoiceStatus`
    (and its `FAILED_INVOICE_STATUSES`), never with a string spelled on the spot."""
    spelled: list[str] = []
    for path in _modules_outside_providers():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Compare):
                continue
            for compared in node.comparators:
                values = compared.elts if isinstance(compared, ast.Tuple | ast.Set) else [compared]
                spelled.extend(
                    f"{path.name}:{node.lineno}"
                    for value in values
                    if isinstance(value, ast.Constant) and value.value in _INVOICE_STATUS_WORDS
                )
    assert spelled == []


_RECONCILE_STEPS = ("invoices", "refunds", "disputes", "unmatched", "voids", "attention")


@pytest.mark.parametrize("step", _RECONCILE_STEPS)
def test_reconcile_steps_only_plan_and_know_nothing_of_a_dry_run(step: str) -> None:
    """A step plans repairs (`gateway.reconcile.repairs`); only the run decides whether
    they are made, so no step tests for a dry run or reaches the code that writes."""
    path = GATEWAY / "reconcile" / f"{step}.py"
    source = path.read_text()
    tree = ast.parse(source)
    assert "dry_run" not in source
    writers = {"gateway.settlement", "gateway.returns", "gateway.purchases"}
    assert _imported_modules(tree).isdisjoint(writers)
    from_gateway = {
        f"gateway.{alias.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "gateway"
        for alias in node.names
    }
    assert from_gateway.isdisjoint(writers | {"gateway.transitions"})
    # The transitions module lends its vocabulary, never a transition.
    from_transitions = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "gateway.transitions"
        for alias in node.names
    }
    assert from_transitions <= {"InvoiceStatus", "FAILED_INVOICE_STATUSES"}
    assert "unit_of_work" not in source
