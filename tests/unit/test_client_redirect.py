"""The Python client never sends its API key on to another host: a redirect is an error."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from embedlib.client import Client, ClientError


def _server(handler: type[http.server.BaseHTTPRequestHandler]) -> http.server.HTTPServer:
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def hosts() -> Iterator[tuple[str, list[str | None]]]:
    seen: list[str | None] = []

    class Elsewhere(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"results": []}')

        do_GET = do_POST

        def log_message(self, *args: object) -> None:
            pass

    other = _server(Elsewhere)

    class Redirecting(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{other.server_port}/v1/search")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    first = _server(Redirecting)
    yield f"http://127.0.0.1:{first.server_port}", seen
    first.shutdown()
    other.shutdown()


def test_a_redirect_is_not_followed_with_the_key(hosts):
    url, seen = hosts
    with pytest.raises(ClientError) as e:
        Client(url, api_key="secret").search(vector=[0.1, 0.2])
    assert e.value.status == 302 and seen == []  # the other host never heard from it
