"""Requests to the service under test: to a Flask test client (the unit and HTTP tiers) or to a live server's
URL (the end-to-end tier), and the checks every test makes of an error answer.

(Imported as ``tests.http``; the standard library's ``http`` is untouched, since ``tests/`` is a package.)
"""

from __future__ import annotations

import json
import socket
import struct
import time
from urllib.parse import urlparse

import requests

from llm_api.auth.keys import issue_key
from llm_api.state import EXTENSION_KEY
from tests.sse import iter_sse, text_chunks

CHAT_PATH = "/chat/new/message"


# ---- a Flask test client ------------------------------------------------------------------------------

def post(client, body, path: str = CHAT_PATH, **kwargs):
    """POST ``body`` as JSON text without a JSON content type, as the lesson's clients send it."""
    return client.post(path, data=json.dumps(body), **kwargs)


def post_json(client, path: str, body, **kwargs):
    """POST ``body`` with ``Content-Type: application/json``, as OpenAI's clients send it."""
    return client.post(path, data=json.dumps(body), content_type="application/json", **kwargs)


def assert_error(response, status: int, code: str) -> dict:
    """The service's error envelope, with ``status`` and ``code``; returns its ``error`` object."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.content_type == "application/json"
    error = response.get_json()["error"]
    assert error["code"] == code and error["message"]
    assert isinstance(error["details"], dict)
    return error


def openai_error(response, status: int, param: str | None, code: str) -> dict:
    """An error in OpenAI's shape, under /v1; returns its ``error`` object."""
    assert response.status_code == status, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["param"], error["code"]) == (param, code)
    assert error["type"] == ("invalid_request_error" if status < 500 else "server_error")
    return error


def new_key(app, name: str = "team-a", scopes: tuple[str, ...] = ("chat",), **limits) -> str:
    """A new API key in ``app``'s database (from then on, every API route needs one)."""
    return issue_key(app.extensions[EXTENSION_KEY].keys.store, name, scopes, **limits)[1]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# ---- a live server ------------------------------------------------------------------------------------

def non_streamed(url: str, body: dict) -> dict:
    """The lesson's JSON answer to ``body`` from the server at ``url``; it must be a 200."""
    response = requests.post(f"{url}{CHAT_PATH}", data=json.dumps(body), timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def stream_events(url: str, body: dict) -> list[dict]:
    """POST ``body`` streamed and return its data events, each with ``"at"``: seconds since the request."""
    started = time.monotonic()
    out = []
    with requests.post(f"{url}{CHAT_PATH}", data=json.dumps({**body, "stream": True}),
                       stream=True, timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        for event in iter_sse(text_chunks(response)):
            if event["data"] is not None:
                out.append({**event, "at": time.monotonic() - started})
    return out


def stored(url: str, message_id: str, timeout: float = 10) -> dict:
    """The exchange ``message_id`` as GET /chat/get/messages lists it, waited for up to ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for message in requests.get(f"{url}/chat/get/messages?limit=500", timeout=10).json()["messages"]:
            if message["message_id"] == message_id:
                return message
        time.sleep(0.1)
    raise AssertionError(f"message {message_id} was not stored")


def raw_request(url: str, head: str, body: bytes = b"") -> socket.socket:
    """Send a hand-written request (``head`` with ``\\n`` line ends) on a fresh socket; returns the socket."""
    parsed = urlparse(url)
    sock = socket.create_connection((parsed.hostname, parsed.port), timeout=30)
    sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
    return sock


def abort(sock: socket.socket) -> None:
    """Close ``sock`` with a reset, as a killed client does, so the server's next write fails at once."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def read_until(sock: socket.socket, predicate, limit: float = 60) -> str:
    """Read from ``sock`` until ``predicate(text so far)``, the peer closes, or ``limit`` seconds pass."""
    data, deadline = b"", time.monotonic() + limit
    while not predicate(data.decode(errors="replace")) and time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace")
