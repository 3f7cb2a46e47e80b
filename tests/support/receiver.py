"""A webhook receiver on loopback for the tests (and the bench): records what it gets
and answers as told."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Behaviour:
    """How to answer: a status and body, after a delay; `garbage` answers bytes that
    are not HTTP; `hold` blocks each request (once recorded) until released."""

    status: int = 200
    body: bytes = b"ok"
    delay: float = 0.0
    garbage: bool = False
    location: str | None = None
    hold: threading.Event | None = None


@dataclass
class Receiver:
    server: _QuietServer
    behaviour: Behaviour = field(default_factory=Behaviour)
    received: list[Received] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/hooks"

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self.arrived:
            while len(self.received) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.arrived.wait(left)
            return list(self.received)

    def ids(self) -> list[str]:
        return [request.headers["webhook-id"] for request in self.received]


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up (a timeout under test) is not an error here."""


def _handler(receiver_ref: list[Receiver]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            receiver = receiver_ref[0]
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            behaviour = receiver.behaviour
            with receiver.arrived:
                receiver.received.append(
                    Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                )
                receiver.arrived.notify_all()
            if behaviour.hold is not None:
                behaviour.hold.wait(30)
            if behaviour.delay:
                time.sleep(behaviour.delay)
            if behaviour.garbage:
                self.wfile.write(b"\x00\xffnot http at all\r\n\r\n")
                self.close_connection = True
                return
            self.send_response(behaviour.status)
            if behaviour.location:
                self.send_header("Location", behaviour.location)
            self.send_header("Content-Length", str(len(behaviour.body)))
            self.end_headers()
            self.wfile.write(behaviour.body)

    return Handler


@contextmanager
def running_receiver(behaviour: Behaviour | None = None) -> Iterator[Receiver]:
    ref: list[Receiver] = []
    server = _QuietServer(("127.0.0.1", 0), _handler(ref))
    receiver = Receiver(server, behaviour or Behaviour())
    ref.append(receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        if receiver.behaviour.hold is not None:
            receiver.behaviour.hold.set()
        server.shutdown()
        server.server_close()
