"""Retries, timeouts and the Idempotency-Key header, against a small local HTTP server
that answers as scripted (the first tries fail), and errors as the API words them."""

import json
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from switchboard_client import (
    APIError,
    Client,
    ConflictError,
    TransportError,
    UnavailableError,
    ValidationError,
)

# One scripted answer: (status, headers, body), or "drop" (close without answering), or
# ("sleep", seconds, answer).
Answer = Any


class Scripted:
    """A local HTTP server: records every request, answers with the next scripted
    answer (the last one repeats)."""

    def __init__(self, answers: List[Answer]) -> None:
        self.answers = answers
        self.requests: List[Dict[str, Any]] = []
        script = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def handle_one(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                script.requests.append(
                    {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body}
                )
                index = min(len(script.requests), len(script.answers)) - 1
                answer = script.answers[index]
                if isinstance(answer, tuple) and answer[0] == "sleep":
                    time.sleep(answer[1])
                    answer = answer[2]
                if answer == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                status, headers, payload = answer
                raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                try:
                    self.wfile.write(raw)
                except OSError:
                    pass  # the client gave up waiting (a timeout test)

            do_GET = do_POST = do_PUT = handle_one

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def keys(self) -> List[Optional[str]]:
        return [r["headers"].get("Idempotency-Key") for r in self.requests]


@pytest.fixture
def scripted() -> Iterator[Callable[[List[Answer]], Scripted]]:
    servers: List[Scripted] = []

    def start(answers: List[Answer]) -> Scripted:
        server = Scripted(answers)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


CREATED = (201, {}, {"notification": {"id": 1, "user_id": 42, "title": "t", "message": "m"}})


def fast_client(url: str, **options: Any) -> Client:
    options.setdefault("backoff", 0.01)
    options.setdefault("timeout", 2.0)
    return Client(url, "key-0123456789abcdef", **options)


def assert_one_uuid4(keys: List[Optional[str]], tries: int) -> str:
    assert len(keys) == tries, keys
    assert len(set(keys)) == 1, f"one key for all tries of a call: {keys}"
    key = keys[0]
    assert key is not None
    assert uuid.UUID(key).version == 4
    return key


def test_a_503_with_retry_after_is_tried_again_with_the_same_key_and_body(scripted):
    server = scripted([(503, {"Retry-After": "1"}, {"error": "could not store the request; try again later"}), CREATED])
    client = fast_client(server.url)
    started = time.monotonic()
    notification = client.create_notification(42, "t", "m", category="hr")
    waited = time.monotonic() - started
    assert notification["id"] == 1
    assert_one_uuid4(server.keys(), 2)
    assert waited >= 0.9, f"Retry-After: 1 was honoured ({waited:.2f} s)"
    first, second = server.requests
    assert first["body"] == second["body"]
    assert json.loads(first["body"]) == {"user_id": 42, "title": "t", "message": "m", "category": "hr"}
    assert first["path"] == "/api/notifications" and first["method"] == "POST"
    assert first["headers"]["Authorization"] == "Bearer key-0123456789abcdef"
    assert first["headers"]["Content-Type"] == "application/json"


def test_a_dropped_connection_and_5xx_are_tried_again_with_the_same_key(scripted):
    server = scripted(["drop", (500, {}, {"error": "boom"}), (502, {}, b"bad gateway"), CREATED])
    client = fast_client(server.url, max_retries=3)
    client.create_notification(42, "t", "m")
    assert_one_uuid4(server.keys(), 4)


def test_a_timed_out_try_is_tried_again_with_the_same_key(scripted):
    server = scripted([("sleep", 1.0, CREATED), CREATED])
    client = fast_client(server.url, timeout=0.3)
    client.create_notification(42, "t", "m")
    assert_one_uuid4(server.keys(), 2)


def test_each_call_has_its_own_key_and_a_given_key_is_sent_as_is(scripted):
    server = scripted([CREATED])
    client = fast_client(server.url)
    client.create_notification(42, "t", "m")
    client.create_notification(42, "t", "m")
    client.create_notification(42, "t", "m", idempotency_key="order-17-shipped")
    keys = server.keys()
    assert keys[0] != keys[1]
    assert keys[2] == "order-17-shipped"


def test_puts_carry_a_key_and_reads_do_not(scripted):
    server = scripted([(200, {}, {"user": {"id": 7, "name": "Ada"}}), (200, {}, {"users": []})])
    client = fast_client(server.url)
    assert client.set_user_name(7, "Ada") == {"id": 7, "name": "Ada"}
    assert client.online() == []
    put, get = server.requests
    assert put["method"] == "PUT" and put["path"] == "/api/users/7"
    assert uuid.UUID(put["headers"]["Idempotency-Key"]).version == 4
    assert get["method"] == "GET" and "Idempotency-Key" not in get["headers"]


def test_when_the_tries_run_out_the_last_answer_is_raised(scripted):
    server = scripted([(503, {"Retry-After": "0"}, {"error": "too many writes are waiting to be stored"})])
    client = fast_client(server.url, max_retries=2)
    with pytest.raises(UnavailableError) as raised:
        client.post_room_message("lobby", "hi")
    error = raised.value
    assert (error.status, error.message, error.attempts, error.retry_after) == (
        503,
        "too many writes are waiting to be stored",
        3,
        0.0,
    )
    assert_one_uuid4(server.keys(), 3)


def test_client_errors_are_raised_at_once_with_the_apis_message(scripted):
    server = scripted(
        [
            (422, {}, {"error": "\"title\" is required"}),
            (409, {}, {"error": "a consultation with id c-1 exists"}),
            (418, {}, b"not json"),
        ]
    )
    client = fast_client(server.url)
    with pytest.raises(ValidationError) as invalid:
        client.create_notification(42, "", "m")
    assert (invalid.value.status, invalid.value.message) == (422, "\"title\" is required")
    assert invalid.value.body == {"error": "\"title\" is required"}
    with pytest.raises(ConflictError) as conflict:
        client.create_conversation("consultation", [1], id="c-1")
    assert conflict.value.message == "a consultation with id c-1 exists"
    with pytest.raises(APIError) as other:
        client.get_conversation("consultation", "c-1")
    assert (other.value.status, other.value.message) == (418, "not json")
    assert len(server.requests) == 3, "none was tried again"


def test_no_server_raises_a_transport_error_after_the_tries(scripted):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = fast_client(f"http://127.0.0.1:{port}", max_retries=2)
    with pytest.raises(TransportError) as raised:
        client.create_notification(42, "t", "m")
    assert raised.value.attempts == 3
    assert "refused" in str(raised.value).lower()


def test_path_segments_are_encoded(scripted):
    server = scripted([(201, {}, {"id": 1, "room": "a b/c", "created_at": "x"})])
    fast_client(server.url).post_room_message("a b/c", "hi")
    assert server.requests[0]["path"] == "/api/rooms/a%20b%2Fc/messages"


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        Client("127.0.0.1:8001", "k")
    with pytest.raises(ValueError):
        Client("http://127.0.0.1:8001", "k", timeout=0)
