"""The application factory, its configuration (files, then environment) and the CLI."""

from __future__ import annotations

import runpy
import shlex
import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from flask import Flask
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from gateway import create_app, migrate
from gateway.cli import main
from gateway.settings import _ENV_TYPES, PROJECT_ROOT, ConfigurationError


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No setting inherited from the shell running the tests."""
    for name in (*_ENV_TYPES, "GATEWAY_SETTINGS"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def settings_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "settings.py"
    path.write_text(text)
    return str(path)


def test_defaults_come_from_config_default(clean_environment: pytest.MonkeyPatch) -> None:
    app = create_app()
    settings = app.extensions["settings"]
    assert settings.api_keys == ()
    assert settings.stripe_secret_key == ""
    assert settings.stripe_tax_mode == "none"
    assert settings.stripe_collection_method == "charge_automatically"
    assert settings.stripe_days_until_due == 30
    assert settings.expiry_batch_size == 500
    assert app.config["MAX_CONTENT_LENGTH"] == 65536
    # No DATABASE_URL: a SQLite file in the instance folder.
    assert settings.database_url == f"sqlite:///{Path(app.instance_path) / 'gateway.sqlite3'}"


def test_environment_overrides_the_settings_file(
    clean_environment: pytest.MonkeyPatch, tmp_path: Path, connection: Connection
) -> None:
    clean_environment.setenv(
        "GATEWAY_SETTINGS",
        settings_file(
            tmp_path,
            'GATEWAY_API_KEYS = "file-key"\nEXPIRY_BATCH_SIZE = 7\nSTRIPE_DAYS_UNTIL_DUE = 10\n'
            'STRIPE_TAX_RATE_IDS = "txr_file"\n',
        ),
    )
    clean_environment.setenv("GATEWAY_API_KEYS", "env-key-1, env-key-2")
    clean_environment.setenv("STRIPE_DAYS_UNTIL_DUE", " 15 ")
    app = create_app(bind=connection)
    settings = app.extensions["settings"]
    assert settings.api_keys == ("env-key-1", "env-key-2")  # environment beats the file
    assert settings.stripe_days_until_due == 15  # parsed as an int
    assert settings.expiry_batch_size == 7  # the file beats the defaults
    assert settings.stripe_tax_rate_ids == ("txr_file",)
    assert settings.stripe_tax_mode == "rates"  # implied by the ids

    client = app.test_client()
    assert (
        client.get("/api/v1/wallets", headers={"Authorization": "Bearer env-key-2"}).status_code
        == 200
    )
    assert (
        client.get("/api/v1/wallets", headers={"Authorization": "Bearer file-key"}).status_code
        == 401
    )


def test_database_url_from_the_environment(
    clean_environment: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'env.sqlite3'}"
    clean_environment.setenv("DATABASE_URL", url)
    app = create_app()
    assert str(app.extensions["db"].engine.url) == url


def test_the_pool_size_is_a_setting_the_server_engine_gets(
    clean_environment: pytest.MonkeyPatch,
) -> None:
    clean_environment.setenv(
        "DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/never_connected"
    )
    assert create_app().extensions["settings"].db_pool_size == 10
    clean_environment.setenv("GATEWAY_DB_POOL_SIZE", "3")
    app = create_app()  # no connection is made until one is used
    assert app.extensions["settings"].db_pool_size == 3
    assert app.extensions["db"].engine.pool.size() == 3


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("GATEWAY_DB_POOL_SIZE", "0", "GATEWAY_DB_POOL_SIZE must be 1 to 1000"),
        ("STRIPE_DAYS_UNTIL_DUE", "soon", "STRIPE_DAYS_UNTIL_DUE must be int"),
        ("STRIPE_DAYS_UNTIL_DUE", "0", "at least 1"),
        ("EXPIRY_BATCH_SIZE", "1.5", "EXPIRY_BATCH_SIZE must be int"),
        ("STRIPE_TAX_MODE", "sometimes", "STRIPE_TAX_MODE must be one of"),
        ("STRIPE_TAX_MODE", "rates", "needs STRIPE_TAX_RATE_IDS"),
        ("STRIPE_COLLECTION_METHOD", "cash", "STRIPE_COLLECTION_METHOD must be one of"),
        # Issue 12 #6: values that started, then failed every request.
        ("STRIPE_WEBHOOK_TOLERANCE_SECONDS", "0", "must be 1 to 86400, got 0"),
        ("STRIPE_WEBHOOK_TOLERANCE_SECONDS", "-300", "must be 1 to 86400"),
        ("STRIPE_TIMEOUT_SECONDS", "0", "STRIPE_TIMEOUT_SECONDS must be 1 to 600"),
        ("STRIPE_MAX_NETWORK_RETRIES", "-1", "STRIPE_MAX_NETWORK_RETRIES must be 0 to 10"),
        ("STRIPE_WEBHOOK_MAX_BODY_BYTES", "0", "STRIPE_WEBHOOK_MAX_BODY_BYTES must be"),
        ("IDEMPOTENCY_KEY_TTL_HOURS", "0", "IDEMPOTENCY_KEY_TTL_HOURS must be"),
        ("PURCHASE_STUCK_GRACE_MINUTES", "-5", "PURCHASE_STUCK_GRACE_MINUTES must be"),
        ("EXPIRY_BATCH_SIZE", "0", "EXPIRY_BATCH_SIZE must be"),
        ("MAX_CONTENT_LENGTH", "0", "MAX_CONTENT_LENGTH must be"),
        ("PURCHASE_DEADLINE_SECONDS", "0", "PURCHASE_DEADLINE_SECONDS must be 1 to 25"),
        ("WEBHOOK_EVENT_RETENTION_DAYS", "3", "WEBHOOK_EVENT_RETENTION_DAYS must be at least 7"),
        ("PURCHASE_DEADLINE_SECONDS", "30", "PURCHASE_DEADLINE_SECONDS must be 1 to 25"),
    ],
)
def test_invalid_settings_stop_the_start(
    clean_environment: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    clean_environment.setenv(name, value)
    with pytest.raises(ConfigurationError, match=message):
        create_app()


@pytest.mark.parametrize("value", [True, 2.5, None, "ten"])
def test_a_settings_file_value_of_the_wrong_type_stops_the_start(
    clean_environment: pytest.MonkeyPatch, tmp_path: Path, value: object
) -> None:
    settings_file = tmp_path / "settings.py"
    settings_file.write_text(f"STRIPE_WEBHOOK_TOLERANCE_SECONDS = {value!r}\n")
    clean_environment.setenv("GATEWAY_SETTINGS", str(settings_file))
    with pytest.raises(ConfigurationError, match="STRIPE_WEBHOOK_TOLERANCE_SECONDS must be"):
        create_app()


def test_wsgi_exposes_the_app(clean_environment: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_environment.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'wsgi.sqlite3'}")
    namespace = runpy.run_path(str(PROJECT_ROOT / "wsgi.py"))
    assert isinstance(namespace["app"], Flask)
    assert namespace["app"].test_client().get("/healthz").status_code == 200


def test_gateway_console_script_is_the_flask_cli_group() -> None:
    [script] = [ep for ep in entry_points(group="console_scripts") if ep.name == "gateway"]
    assert script.value == "gateway.cli:main"
    assert script.load() is main


def test_gateway_lists_every_operator_command(clean_environment: pytest.MonkeyPatch) -> None:
    """The `gateway/cli/` package registers each command group once, under its name."""
    app = create_app()
    context = click.Context(app.cli)
    commands = set(app.cli.list_commands(context))
    assert {"db", "expire-wallets", "idempotency", "webhooks", "reconcile"} <= commands
    db_commands = app.cli.get_command(context, "db")
    assert isinstance(db_commands, click.Group)
    assert set(db_commands.commands) == {"upgrade", "downgrade", "current"}


def test_gateway_db_upgrade_on_a_fresh_sqlite_file(
    clean_environment: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The console script, configured only by DATABASE_URL, migrates and runs commands."""
    database = tmp_path / "fresh.sqlite3"
    clean_environment.setenv("DATABASE_URL", f"sqlite:///{database}")
    cli = CliRunner()
    result = cli.invoke(main, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert f"database at {migrate.head_revision()}" in result.output
    from sqlalchemy import create_engine

    engine = create_engine(f"sqlite:///{database}")
    try:
        with engine.connect() as conn:
            assert "wallets" in inspect(conn).get_table_names()
    finally:
        engine.dispose()
    assert cli.invoke(main, ["db", "current"]).exit_code == 0
    expired = cli.invoke(main, ["expire-wallets"])
    assert expired.exit_code == 0, expired.output
    assert "expired 0 wallet(s)" in expired.output


def test_a_test_run_that_collects_nothing_fails_make(tmp_path: Path) -> None:
    """`make test` must not pass vacuously: its pytest command exits 5 with no test."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    dry_run = subprocess.run(  # noqa: S603 - our own Makefile, printed, not executed
        [make, "-n", "-s", "pytest"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    )
    command = shlex.split(dry_run.stdout.strip().splitlines()[-1])
    assert command[1:3] == ["-m", "pytest"]
    assert "||" not in command
    (tmp_path / "test_nothing.py").write_text("# no tests here\n")
    run = subprocess.run(  # noqa: S603 - the Makefile's own pytest command
        [sys.executable, *command[1:], str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 5, run.stdout + run.stderr
