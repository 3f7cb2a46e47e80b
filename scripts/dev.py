"""`make run`: a usable development setup on SQLite in one command.

Creates (once) a development API key in instance/dev-api-key, migrates the SQLite
database and starts the Flask development server on http://127.0.0.1:5000. The key is
random per machine: there is no default key that could also open a production setup.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INSTANCE = ROOT / "instance"
KEY_FILE = INSTANCE / "dev-api-key"


def main() -> int:
    INSTANCE.mkdir(exist_ok=True)
    if not KEY_FILE.exists():
        KEY_FILE.write_text(f"dev_{secrets.token_urlsafe(24)}\n")
        KEY_FILE.chmod(0o600)
    key = KEY_FILE.read_text().strip()
    env = dict(os.environ)
    env.setdefault("GATEWAY_API_KEYS", key)
    gateway = str(Path(sys.executable).parent / "gateway")
    subprocess.run([gateway, "db", "upgrade"], check=True, env=env, cwd=ROOT)
    host, port = env.get("GATEWAY_HOST", "127.0.0.1"), env.get("GATEWAY_PORT", "5000")
    print(
        f"\nCredit gateway (development, SQLite at instance/gateway.sqlite3)\n"
        f"  API:     http://{host}:{port}/api/v1  (OpenAPI: /api/v1/openapi.json)\n"
        f"  API key: {key}   (from {KEY_FILE.relative_to(ROOT)})\n"
        f"  Try:     curl -H 'Authorization: Bearer {key}' http://{host}:{port}/api/v1/wallets\n"
        f"  Stripe:  set STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRETS to sell paid credits\n",
        flush=True,
    )
    os.execvpe(gateway, [gateway, "run", "--host", host, "--port", port], env)


if __name__ == "__main__":
    sys.exit(main())
