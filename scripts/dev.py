"""`make run`: a usable development setup on SQLite in one command.

Creates (once, under instance/) a development API key, a console operator `admin` with
a random password and a session secret; migrates the SQLite database; and, unless
STRIPE_SECRET_KEY is set, starts the Stripe sandbox (the project's Stripe-compatible
server with hosted invoice pages, gateway/providers/stripe/sandbox_pages.py) and points
the service at it. Then starts `gateway worker` (outgoing webhooks, which may go to
plain http:// here; the expiry sweep; purges) and the Flask development server on
http://127.0.0.1:5000; Ctrl-C stops both.
Everything is random per machine: no default key or password could also open a
production setup.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INSTANCE = ROOT / "instance"
BIN = Path(sys.executable).parent


def _secret(name: str, make: str) -> str:
    """A value kept in instance/NAME, made once (owner-readable only)."""
    INSTANCE.mkdir(exist_ok=True)
    path = INSTANCE / name
    if not path.exists():
        path.write_text(make + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def _wait_for(url: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)  # noqa: S310  (our loopback sandbox)
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def stripe_setup(
    env: dict[str, str], host: str, port: str
) -> tuple[dict[str, str], list[str] | None]:
    """The Stripe settings to add, and the sandbox's command line, or None.

    With STRIPE_SECRET_KEY set the service talks to that Stripe account: no sandbox, no
    setting changed. Without it, the sandbox on GATEWAY_SANDBOX_PORT, with a test key
    and a webhook secret made once for this machine.
    """
    if env.get("STRIPE_SECRET_KEY"):
        return {}, None
    sandbox_port = env.get("GATEWAY_SANDBOX_PORT", "12111")
    stripe_key = _secret("dev-sandbox-stripe-key", f"sk_test_sandbox_{secrets.token_hex(8)}")
    webhook_secret = _secret("dev-sandbox-webhook-secret", f"whsec_{secrets.token_hex(16)}")
    command = [
        sys.executable, "-m", "gateway.providers.stripe.sandbox_pages",
        "--port", sandbox_port, "--api-key", stripe_key,
        "--webhook-url", f"http://{host}:{port}/webhooks/stripe",
        "--webhook-secret", webhook_secret,
        "--return-url", f"http://{host}:{port}/console",
    ]  # fmt: skip
    settings = {
        "STRIPE_SECRET_KEY": stripe_key,
        "STRIPE_API_BASE": f"http://127.0.0.1:{sandbox_port}",
        "STRIPE_WEBHOOK_SECRETS": webhook_secret,
        "STRIPE_SANDBOX": "1",
    }
    return settings, command


def main() -> int:
    INSTANCE.mkdir(exist_ok=True)
    key = _secret("dev-api-key", f"dev_{secrets.token_urlsafe(24)}")
    password = _secret("dev-operator-password", secrets.token_urlsafe(12))
    env = dict(os.environ)
    env.setdefault("GATEWAY_API_KEYS", key)
    env.setdefault("GATEWAY_ENV", "development")
    env.setdefault("OUTGOING_WEBHOOKS_ALLOW_HTTP", "true")
    env.setdefault("SECRET_KEY", _secret("dev-secret-key", secrets.token_hex(32)))
    host, port = env.get("GATEWAY_HOST", "127.0.0.1"), env.get("GATEWAY_PORT", "5000")
    gateway = str(BIN / "gateway")
    subprocess.run([gateway, "db", "upgrade"], check=True, env=env, cwd=ROOT)
    created = subprocess.run(
        [gateway, "operators", "create", "admin", "--password-stdin"],
        input=password + "\n",
        check=False,
        text=True,
        capture_output=True,
        env=env,
        cwd=ROOT,
    )
    if created.returncode != 0 and "already exists" not in created.stderr:
        sys.stderr.write(created.stderr)
        return created.returncode

    settings, sandbox_command = stripe_setup(env, host, port)
    env.update(settings)
    sandbox: subprocess.Popen[bytes] | None = None
    if sandbox_command is None:
        stripe_line = "Stripe:  your STRIPE_SECRET_KEY (no sandbox)"
    else:
        sandbox = subprocess.Popen(sandbox_command, cwd=ROOT)
        _wait_for(f"{env['STRIPE_API_BASE']}/sandbox/invoices/in_none")
        stripe_line = (
            f"Stripe:  SANDBOX on {env['STRIPE_API_BASE']}: an invoice's link opens a local\n"
            "           page whose Pay / Fail payment buttons send signed webhooks here.\n"
            "           No money moves."
        )
    print(
        f"\nCredit gateway (development, SQLite at instance/gateway.sqlite3)\n"
        f"  Console: http://{host}:{port}/console  (operator admin, password {password},\n"
        f"           from instance/dev-operator-password)\n"
        f"  API:     http://{host}:{port}/api/v1  (OpenAPI: /api/v1/openapi.json)\n"
        f"  API key: {key}   (from instance/dev-api-key)\n"
        f"  Try:     curl -H 'Authorization: Bearer {key}' http://{host}:{port}/api/v1/wallets\n"
        f"  {stripe_line}\n"
        f"  Worker:  gateway worker runs beside it (webhooks to POST /api/v1/webhook_endpoints)\n",
        flush=True,
    )
    worker = subprocess.Popen([gateway, "worker"], env=env, cwd=ROOT)
    try:
        return subprocess.call([gateway, "run", "--host", host, "--port", port], env=env, cwd=ROOT)
    except KeyboardInterrupt:
        return 0
    finally:
        # The worker finishes the delivery in hand, then exits.
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
        if sandbox is not None:
            sandbox.terminate()
            sandbox.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
