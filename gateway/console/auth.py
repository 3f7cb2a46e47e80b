"""Signing in and out, and what every console request checks first.

Failed sign-ins are counted with `limits` (the rate-limit library behind
Flask-Limiter), per client address and per name tried: past the limit, sign-in
answers 429 without looking at the password. A wrong password and an unknown name
get the same answer, after the same work.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from flask import (
    Flask,
    Response,
    current_app,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_wtf.csrf import CSRFError
from limits import RateLimitItem, parse
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from gateway import actors, operators
from gateway.console import console, csrf
from gateway.db import get_session, unit_of_work, utcnow
from gateway.models import Operator
from gateway.settings import current_settings

# Failed sign-ins allowed before sign-in is refused for a while.
FAILURES_PER_ADDRESS = parse("10/5minutes")
FAILURES_PER_NAME = parse("5/5minutes")
WRONG_CREDENTIALS = "Wrong name or password."
_OPEN_ENDPOINTS = frozenset({"console.login", "console.static"})


class SignInLimiter:
    """Counts failed sign-ins; `allowed` says whether another attempt may be checked."""

    def __init__(self, storage_uri: str) -> None:
        self._limiter = MovingWindowRateLimiter(storage_from_string(storage_uri))

    def _keys(self, address: str, name: str) -> list[tuple[RateLimitItem, str]]:
        return [
            (FAILURES_PER_ADDRESS, f"address:{address}"),
            (FAILURES_PER_NAME, f"name:{name.lower()[:64]}"),
        ]

    def allowed(self, address: str, name: str) -> bool:
        return all(
            self._limiter.test(item, "console-sign-in", key)
            for item, key in self._keys(address, name)
        )

    def failed(self, address: str, name: str) -> None:
        for item, key in self._keys(address, name):
            self._limiter.hit(item, "console-sign-in", key)


def init_sign_in_limiter(app: Flask, storage_uri: str) -> None:
    app.extensions["console_sign_in_limiter"] = SignInLimiter(storage_uri)


def _limiter() -> SignInLimiter:
    limiter: SignInLimiter = current_app.extensions["console_sign_in_limiter"]
    return limiter


def local_path(target: str | None) -> str | None:
    """`target` if it is a path of this console (`next=`), else None: never another site."""
    if not target or not target.startswith("/console") or "\\" in target:
        return None
    split = urlsplit(target)
    if split.scheme or split.netloc or any(ord(char) < 32 for char in target):
        return None
    return target


def current_operator() -> Operator:
    operator: Operator = g.operator
    return operator


def operator_actor() -> str:
    """`operator:NAME`: the author of the ledger entries this request makes."""
    return actors.operator(current_operator().name)


def operator_principal() -> str:
    """Scopes the console's form tokens to the operator (idempotency keys' principal)."""
    return actors.operator_principal(current_operator().id)


@console.before_request
def _guard() -> ResponseReturnValue | None:
    if not current_app.config.get("SECRET_KEY"):
        return (
            render_template(
                "console/unavailable.html",
                reason="The console needs SECRET_KEY: set it and restart the service.",
            ),
            503,
        )
    if request.endpoint == "console.static":
        return None
    if request.method == "POST":
        csrf.protect()  # 400 (CSRFError) before anything runs
    g.operator = None
    operator_id = session.get("operator_id")
    if isinstance(operator_id, str):
        operator = get_session().get(Operator, operator_id)
        if operator is not None and operator.is_active:
            g.operator = operator
        else:
            session.clear()  # disabled or removed since: the session ends here
    if g.operator is None and request.endpoint not in _OPEN_ENDPOINTS:
        return redirect(url_for("console.login", next=request.full_path.rstrip("?")))
    return None


@console.context_processor
def _page_context() -> dict[str, Any]:
    return {"sandbox": current_settings().stripe_sandbox}


@console.errorhandler(CSRFError)
def _csrf_refused(exc: CSRFError) -> ResponseReturnValue:
    """A POST without a valid CSRF token: 400, and nothing ran."""
    page = render_template(
        "console/message.html",
        title="Form expired",
        message="This form could not be accepted (its security token is missing or no longer "
        "valid). Nothing was changed. Go back, reload the page and submit it again.",
    )
    return page, 400


@console.after_request
def _headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    )
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    if request.endpoint != "console.static":
        response.headers["Cache-Control"] = "no-store"
    return response


@console.route("/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    target = local_path(request.args.get("next")) or url_for("console.customers")
    if request.method == "GET":
        if g.operator is not None:
            return redirect(target)
        return render_template("console/login.html", name="", error=None, next=target)
    name = request.form.get("name", "").strip()
    password = request.form.get("password", "")
    address = request.remote_addr or "unknown"
    limiter = _limiter()
    if not limiter.allowed(address, name):
        error = "Too many failed sign-ins. Wait a few minutes, then try again."
        page = render_template("console/login.html", name=name, error=error, next=target)
        return page, 429, {"Retry-After": "300"}
    with unit_of_work(get_session()) as db:
        operator = operators.authenticate(db, name, password, utcnow())
        operator_id = operator.id if operator is not None else None
    if operator_id is None:
        limiter.failed(address, name)
        page = render_template(
            "console/login.html", name=name, error=WRONG_CREDENTIALS, next=target
        )
        return page, 401
    # A fresh session: nothing from before signing in (a planted cookie, an old CSRF
    # token) carries over.
    session.clear()
    session["operator_id"] = operator_id
    session.permanent = True
    return redirect(target, 303)


@console.route("/logout", methods=["POST"])
def logout() -> Any:
    session.clear()
    return redirect(url_for("console.login"), 303)
