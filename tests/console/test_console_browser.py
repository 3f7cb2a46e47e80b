"""The seed's flows in a real headless Chromium (Debian's chromium + chromedriver,
through selenium), against the service and its Stripe sandbox over real HTTP.

The service runs in a thread on a SQLite file with the real migrations; the sandbox
(`gateway.providers.stripe.sandbox_pages`) makes the invoices and, from its "Pay" and
"Fail payment" buttons, sends signed webhooks to the service, as in `make run`.
Screenshots of every screen, at desktop width and at 375 px, are saved under
artifacts/screenshots/ (GATEWAY_SCREENSHOTS_DIR to change it).

Without Chromium the module is skipped locally and fails under CI=true (`.ci/run`
installs it).
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from sqlalchemy import select, update
from werkzeug.serving import BaseWSGIServer, make_server

from gateway import create_app
from gateway.db import get_db
from gateway.models import Purchase, WalletTransaction
from gateway.providers.stripe.sandbox_pages import StripeSandbox
from gateway.settings import PROJECT_ROOT
from tests.support.config import IN_CI, TEST_SETTINGS
from tests.support.console import PASSWORD, make_operator

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
SCREENSHOTS = Path(
    os.environ.get("GATEWAY_SCREENSHOTS_DIR", PROJECT_ROOT / "artifacts" / "screenshots")
)
API_KEY = "browser-test-key"
WEBHOOK_SECRET = "whsec_browser_test"
DESKTOP, PHONE = (1280, 900), (375, 812)

if CHROMIUM is None or CHROMEDRIVER is None:
    if IN_CI:
        raise RuntimeError("CI needs chromium and chromedriver (.ci/run installs them)")
    pytest.skip("chromium and chromedriver are not installed", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import (  # noqa: E402
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402


@dataclass
class Service_:
    app: Flask
    url: str
    sandbox: StripeSandbox


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service_]:
    database = tmp_path_factory.mktemp("browser") / "gateway.sqlite3"
    server: BaseWSGIServer | None = None
    sandbox = StripeSandbox(
        api_key="sk_test_browser", webhook_url="", webhook_secret=WEBHOOK_SECRET
    )
    sandbox.start()
    settings = {
        **TEST_SETTINGS,
        "DATABASE_URL": f"sqlite:///{database}",
        "GATEWAY_ENV": "development",  # plain http on loopback: no Secure cookie
        "GATEWAY_API_KEYS": f"browser={API_KEY}",
        "STRIPE_SECRET_KEY": "sk_test_browser",
        "STRIPE_API_BASE": sandbox.url,
        "STRIPE_WEBHOOK_SECRETS": WEBHOOK_SECRET,
        "STRIPE_SANDBOX": "1",
    }
    app = create_app(settings)
    assert app.test_cli_runner().invoke(args=["db", "upgrade"]).exit_code == 0
    make_operator(app, "alice")
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    sandbox.webhook_url = f"{url}/webhooks/stripe"
    sandbox.return_url = f"{url}/console"
    try:
        yield Service_(app, url, sandbox)
    finally:
        server.shutdown()
        sandbox.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    assert CHROMIUM is not None and CHROMEDRIVER is not None
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(argument)  # fmt: skip
    # The console must work without JavaScript: the browser runs with it turned off.
    options.add_experimental_option(
        "prefs", {"profile.managed_default_content_settings.javascript": 2}
    )
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_window_size(*DESKTOP)
    driver.implicitly_wait(2)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


def api(service: Service_, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    response = requests.request(
        method, f"{service.url}/api/v1{path}", json=body,
        headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30,
    )  # fmt: skip
    assert response.status_code < 300, response.text
    return response.json()


def customer_with_subscription(service: Service_, external_id: str, name: str) -> None:
    api(
        service,
        "POST",
        "/customers",
        {"customer": {"external_id": external_id, "currency": "USD", "name": name}},
    )
    api(service, "POST", "/subscriptions",
        {"subscription": {"external_id": f"sub-{external_id}",
                          "external_customer_id": external_id, "plan_code": "pro"}})  # fmt: skip


def shoot(driver: WebDriver, name: str) -> None:
    """The whole page, at desktop width and at 375 px (then back to desktop)."""
    for label, (width, height) in (("desktop", DESKTOP), ("375px", PHONE)):
        driver.set_window_size(width, height)
        # The page's height without running its scripts (there are none): the body's box.
        full = driver.find_element(By.TAG_NAME, "body").size["height"] + 40
        driver.set_window_size(width, max(height, min(full, 6000)))
        driver.save_screenshot(str(SCREENSHOTS / f"{name}-{label}.png"))
        if label == "375px":
            # Nothing wider than the phone: no sideways scrolling.
            widest = max(
                element.rect["x"] + element.rect["width"]
                for element in driver.find_elements(By.CSS_SELECTOR, "main *, header, nav")
            )
            assert widest <= width + 1, f"{name} is wider than {width} px ({widest})"
    driver.set_window_size(*DESKTOP)


def field(driver: WebDriver, label_text: str) -> WebElement:
    """The input a `<label for>` with this text names (what a person reads)."""
    label = driver.find_element(By.XPATH, f"//label[normalize-space()='{label_text}']")
    return driver.find_element(By.ID, label.get_attribute("for") or "")


def _left(page: WebElement) -> Any:
    """A wait condition: `page` (the old document's root) is gone. Chromium's driver
    says so either as a stale element or, while the next document replaces it, as
    "Node with given id does not belong to the document"; both mean gone."""

    def gone(_driver: WebDriver) -> bool:
        try:
            page.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as exc:
            if "does not belong to the document" in (exc.msg or ""):
                return True
            raise
        return False

    return gone


def press(driver: WebDriver, text: str) -> None:
    """Click the button or link reading `text`, and wait for the page it leads to."""
    page = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(
        By.XPATH, f"//button[normalize-space()='{text}'] | //a[normalize-space()='{text}']"
    ).click()
    WebDriverWait(driver, 20).until(_left(page))
    # The old page is gone; wait until the new one is whole (its scripts are off, the
    # driver's are not), so that no element is taken from a document still replaced.
    WebDriverWait(driver, 20).until(
        lambda d: d.execute_script("return document.readyState") == "complete"
    )


def fact(driver: WebDriver, term: str) -> str:
    return driver.find_element(By.XPATH, f"//dt[normalize-space()='{term}']/../dd").text


def stored_entries(service: Service_) -> list[WalletTransaction]:
    with service.app.app_context(), get_db().session() as session:
        return list(
            session.execute(
                select(WalletTransaction).order_by(WalletTransaction.created_at)
            ).scalars()
        )


def test_the_seeds_flows_in_chromium(service: Service_, browser: WebDriver) -> None:  # noqa: PLR0915 - one walk through the console, each step where the last left the browser
    driver = browser
    customer_with_subscription(service, "acme", "Acme <Corp> & Sons")
    for n in range(3):
        customer_with_subscription(service, f"other-{n}", f"Other customer {n}")

    # Signed out: any page leads to sign-in; a wrong password is told plainly.
    driver.get(f"{service.url}/console/customers")
    assert "/console/login" in driver.current_url
    field(driver, "Name").send_keys("alice")
    field(driver, "Password").send_keys("not the password")
    press(driver, "Sign in")
    assert "Wrong name or password." in driver.page_source
    shoot(driver, "01-sign-in")
    field(driver, "Password").send_keys(PASSWORD)
    press(driver, "Sign in")

    # Customers (side menu): search, then the customer.
    assert driver.current_url.endswith("/console/customers")
    assert driver.find_element(By.CSS_SELECTOR, ".sandbox").text.startswith("Sandbox")
    shoot(driver, "02-customers")
    field(driver, "Search by external id or name").send_keys("acme")
    press(driver, "Search")
    rows = driver.find_elements(By.CSS_SELECTOR, "table.list tbody tr")
    assert len(rows) == 1 and "Acme <Corp> & Sons" in rows[0].text  # shown as text
    press(driver, "acme")

    # Wallets tab: no wallet yet -> "Add a wallet & credits".
    assert "This customer has no active wallet." in driver.page_source
    shoot(driver, "03-customer-no-wallet")
    press(driver, "Add a wallet & credits")
    field(driver, "Wallet name (optional)").send_keys("Prepaid")
    field(driver, "Credit value").send_keys("five")
    field(driver, "Credits to be purchased").send_keys("10")
    field(driver, "Credits granted for free").send_keys("5")
    press(driver, "Add wallet & credits")
    error = driver.find_element(By.CSS_SELECTOR, ".has-error .field-error")
    assert "not a valid decimal" in error.text
    assert error.find_element(By.XPATH, "..").find_element(By.TAG_NAME, "label").text == (
        "Credit value"
    )
    shoot(driver, "04-add-wallet-error")
    assert stored_entries(service) == []  # nothing stored
    rate = field(driver, "Credit value")
    rate.clear()
    rate.send_keys("2.50")
    shoot(driver, "05-add-wallet")
    press(driver, "Add wallet & credits")

    # Granted credits at once; purchased ones pending until the invoice is paid.
    assert "Wallet added." in driver.page_source
    assert fact(driver, "Balance").startswith("5.00000 credits")
    assert fact(driver, "Pending credits") == "10.00000"
    assert fact(driver, "Credit value") == "1 credit = 2.50 USD"
    shoot(driver, "06-customer-wallet-pending")

    # The hosted invoice link opens the sandbox's page; "Pay" sends invoice.paid.
    press(driver, "Invoice")
    assert "Stripe sandbox" in driver.page_source and "25.00 USD" in driver.page_source
    shoot(driver, "07-sandbox-invoice")
    press(driver, "Pay")
    assert "Paid." in driver.page_source
    assert service.sandbox.deliveries[-1] == ("invoice.paid", 200)
    press(driver, "Back to the console")
    driver.get(f"{service.url}/console/customers/acme")
    assert fact(driver, "Balance").startswith("15.00000 credits")
    assert fact(driver, "Pending credits") == "0.00000"
    assert "paid" in driver.find_element(By.CSS_SELECTOR, "table.list tbody").text
    shoot(driver, "08-customer-wallet-paid")

    # Edit wallet -> Top up credit; this payment fails.
    press(driver, "Edit wallet")
    shoot(driver, "09-edit-wallet")
    press(driver, "Top up credit")
    field(driver, "Credits to be purchased").send_keys("4")
    shoot(driver, "10-top-up")
    press(driver, "Top up credit")
    assert "Credits added." in driver.page_source
    press(driver, "Invoice")
    press(driver, "Fail payment")
    assert "Payment failed." in driver.page_source
    driver.get(f"{service.url}/console/customers/acme")
    newest = driver.find_element(By.CSS_SELECTOR, "table.list tbody tr").text
    assert "failed" in newest and "uncollectible" in newest
    assert fact(driver, "Balance").startswith("15.00000 credits")

    # Edit wallet -> Edit information.
    press(driver, "Edit wallet")
    press(driver, "Edit information")
    name = field(driver, "Wallet name (optional)")
    name.clear()
    name.send_keys("Main wallet")
    field(driver, "Expiration date (optional)").send_keys("12/31/2099")
    shoot(driver, "11-edit-information")
    press(driver, "Edit information")
    assert "Wallet information saved." in driver.page_source
    assert fact(driver, "Name") == "Main wallet"
    assert fact(driver, "Expiration").startswith("2099-12-31 23:59 UTC")

    # Edit wallet -> Terminate wallet: a confirmation that says it cannot be undone.
    press(driver, "Edit wallet")
    press(driver, "Terminate wallet")
    assert "cannot be undone" in driver.page_source
    shoot(driver, "12-terminate-wallet")
    press(driver, "Terminate wallet")
    assert "Wallet terminated." in driver.page_source
    assert "This customer has no active wallet." in driver.page_source
    assert not driver.find_elements(By.XPATH, "//a[normalize-space()='Edit wallet']")
    assert (
        "Main wallet"
        in driver.find_element(By.ID, "terminated-wallets").find_element(By.XPATH, "..").text
    )
    shoot(driver, "13-customer-terminated")
    voided = stored_entries(service)[-1]
    assert (voided.transaction_status, voided.credit_amount, voided.created_by) == (
        "voided", 15, "operator:alice"
    )  # fmt: skip

    # Attention: a purchase that needs a person.
    with service.app.app_context(), get_db().session() as session:
        session.execute(
            update(Purchase)
            .where(Purchase.invoice_status == "uncollectible")
            .values(status="review_required", attention_reason="paid in another currency")
        )
        session.commit()
    press(driver, "Attention")
    assert "Review required" in driver.page_source
    assert "paid in another currency" in driver.page_source
    shoot(driver, "14-attention")

    # Signing out ends the session.
    press(driver, "Sign out")
    driver.get(f"{service.url}/console/customers")
    assert "/console/login" in driver.current_url
