"""`gateway operators create NAME` and `gateway operators disable NAME`."""

from __future__ import annotations

import sys

import click
from flask.cli import with_appcontext

from gateway import operators
from gateway.db import get_session, unit_of_work, utcnow
from gateway.errors import DomainError


@click.group("operators")
def operators_group() -> None:
    """People who sign in to the console at /console."""


@operators_group.command("create")
@click.argument("name")
@click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the password from the first line of standard input instead of a prompt.",
)
@with_appcontext
def create_command(name: str, password_stdin: bool) -> None:
    """Create the operator NAME (password from a prompt, or --password-stdin)."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        with unit_of_work(get_session()) as session:
            operators.create_operator(session, name, password, utcnow())
    except DomainError as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(f"operator {name} created; sign in at /console/login")


@operators_group.command("disable")
@click.argument("name")
@with_appcontext
def disable_command(name: str) -> None:
    """Disable the operator NAME: no more sign-ins, open sessions end."""
    try:
        with unit_of_work(get_session()) as session:
            operators.disable_operator(session, name, utcnow())
    except DomainError as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(f"operator {name} disabled")
