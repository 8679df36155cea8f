"""verify_webhook: the signature switchboard's own webhook requests carry (the real
binary posting to a local receiver), and what must be refused."""

import hashlib
import hmac
import json
import queue
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator, Tuple

import pytest

from switchboard_client import HEADER, sign_webhook, verify_webhook
from switchboard_client.testing import run_switchboard

SECRET = "whsec-test-0123456789abcdef"
BODY = b'{"events":[{"id":1,"type":"user.online","data":{"user_id":"7"}}]}'
T = 1_700_000_000


def header_for(body: bytes, t: int = T, secret: str = SECRET) -> str:
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def test_a_good_signature_verifies_within_the_tolerance():
    header = header_for(BODY)
    assert verify_webhook(SECRET, header, BODY, now=T)
    assert verify_webhook(SECRET.encode(), header, BODY.decode(), now=T + 300)
    assert verify_webhook(SECRET, header, BODY, now=T - 300), "a clock a little behind"
    assert sign_webhook(SECRET, BODY, timestamp=T) == header


def test_replays_tampering_and_other_secrets_are_refused():
    header = header_for(BODY)
    assert not verify_webhook(SECRET, header, BODY, now=T + 301), "too old: a replay"
    assert not verify_webhook(SECRET, header, BODY, now=T - 301), "too far ahead"
    assert not verify_webhook(SECRET, header, BODY, tolerance=10, now=T + 11)
    assert not verify_webhook(SECRET, header, BODY + b" ", now=T), "a changed body"
    assert not verify_webhook("another-secret", header, BODY, now=T)
    moved = header.replace(f"t={T}", f"t={T + 1}")
    assert not verify_webhook(SECRET, moved, BODY, now=T), "the time is signed too"


def test_malformed_headers_are_refused_not_raised():
    mac = header_for(BODY).split("v1=")[1]
    for header in [None, "", "garbage", f"v1={mac}", f"t=abc,v1={mac}", f"t={T}", f"t={T},v1=", f"t={T},v1=zz€"]:
        assert not verify_webhook(SECRET, header, BODY, now=T), header


def test_any_of_several_v1_signatures_may_match():
    good = header_for(BODY).split("v1=")[1]
    assert verify_webhook(SECRET, f"t={T},v1={'0' * 64},v1={good}", BODY, now=T)


class Receiver:
    """Records switchboard's webhook requests (headers and raw body), answers 204."""

    def __init__(self) -> None:
        self.requests: "queue.Queue[Tuple[Any, bytes]]" = queue.Queue()
        received = self.requests

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.put((self.headers, body))  # case-insensitive
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/switchboard"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


def test_the_real_servers_webhooks_verify(binary, receiver):
    env = {"SWITCHBOARD_WEBHOOK_URL": receiver.url, "SWITCHBOARD_WEBHOOK_SECRET": SECRET}
    with run_switchboard(binary, env) as sb:
        stored = sb.client().post_room_message("lobby", "Deploy finished", sender_id="ci", sender_name="CI bot")
        headers, body = receiver.requests.get(timeout=10)
    header = headers.get(HEADER)
    assert header, headers
    assert verify_webhook(SECRET, header, body)
    assert not verify_webhook("not-the-secret-at-all", header, body)
    assert not verify_webhook(SECRET, header, body.replace(b"Deploy", b"Deplay"))
    t = int(header.split(",")[0].split("=")[1])
    assert not verify_webhook(SECRET, header, body, now=t + 301)
    events = json.loads(body)["events"]
    created = [e for e in events if e["type"] == "message.created"]
    assert created and created[0]["data"]["message"]["id"] == stored["id"]
    assert created[0]["data"]["message"]["content"] == "Deploy finished"
