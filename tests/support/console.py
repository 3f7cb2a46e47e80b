"""Helpers for console tests: operators, signing in, reading forms off a page."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

PASSWORD = "correct horse battery staple"


def make_operator(app: Flask, name: str = "alice", password: str = PASSWORD) -> str:
    """An operator, created the way an administrator does (`gateway operators create`)."""
    result = app.test_cli_runner().invoke(
        args=["operators", "create", name, "--password-stdin"], input=f"{password}\n"
    )
    assert result.exit_code == 0, result.output
    return name


def hidden(page: TestResponse | str, name: str) -> str:
    text = page if isinstance(page, str) else page.get_data(as_text=True)
    match = re.search(rf'name="{name}" value="([^"]*)"', text)
    assert match is not None, f"no hidden {name} on the page"
    return match.group(1)


def sign_in(client: FlaskClient, name: str = "alice", password: str = PASSWORD) -> TestResponse:
    page = client.get("/console/login")
    return client.post(
        "/console/login",
        data={"csrf_token": hidden(page, "csrf_token"), "name": name, "password": password},
    )


def submit(client: FlaskClient, path: str, **fields: str) -> TestResponse:
    """Open the form at `path` and send it with `fields` (its tokens as rendered)."""
    page = client.get(path)
    assert page.status_code == 200, page.get_data(as_text=True)
    data = {"csrf_token": hidden(page, "csrf_token"), "form_token": hidden(page, "form_token")}
    return client.post(path, data={**data, **fields})


class FormAudit(HTMLParser):
    """Inputs, labels and buttons of a page, to check that every input has a label."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[dict[str, Any]] = []
        self.label_targets: list[str] = []
        self.buttons: list[str] = []
        self.links: list[str] = []
        self._in_button = False
        self._in_link = False
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag in ("input", "select", "textarea"):
            self.inputs.append(attributes)
        elif tag == "label" and attributes.get("for"):
            self.label_targets.append(str(attributes["for"]))
        elif tag in ("button", "a"):
            self._text = []
            self._in_button = tag == "button"
            self._in_link = tag == "a"

    def handle_data(self, data: str) -> None:
        if self._in_button or self._in_link:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        text = " ".join("".join(self._text).split())
        if tag == "button" and self._in_button:
            self.buttons.append(text)
            self._in_button = False
        elif tag == "a" and self._in_link:
            self.links.append(text)
            self._in_link = False

    def unlabelled(self) -> list[dict[str, Any]]:
        return [
            field
            for field in self.inputs
            if field.get("type") != "hidden" and field.get("id") not in self.label_targets
        ]


def audit(page: TestResponse) -> FormAudit:
    parser = FormAudit()
    parser.feed(page.get_data(as_text=True))
    return parser
