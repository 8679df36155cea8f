"""Every route of the server API through the client, against the real binary, with
WebSocket clients (``websockets``) seeing what the calls push."""

import http.client
import json
import threading
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from switchboard_client import (
    AuthenticationError,
    Client,
    ConflictError,
    NotFoundError,
    ValidationError,
)
from switchboard_client.testing import Switchboard

WAIT = 10


def ws(sb: Switchboard, path: str, user: Any, **claims: Any) -> ClientConnection:
    return connect(f"{sb.ws_url}{path}?token={sb.token(user, **claims)}", open_timeout=WAIT)


def recv(socket: ClientConnection) -> Dict[str, Any]:
    return json.loads(socket.recv(timeout=WAIT))


def recv_type(socket: ClientConnection, kind: str) -> Dict[str, Any]:
    for _ in range(50):
        frame = recv(socket)
        if frame.get("type") == kind:
            return frame
    raise AssertionError(f"no {kind} frame")


@pytest.fixture
def client(switchboard: Switchboard) -> Client:
    return switchboard.client(timeout=5, backoff=0.05)


def test_health_and_metrics(client):
    assert client.health() == {"status": "ok"}
    assert "switchboard_connections" in client.metrics()


def test_room_messages_and_online(switchboard, client):
    with ws(switchboard, "/ws/rooms/deploys/", 42, username="ada") as ada:
        assert recv(ada) == {"type": "room_users_list", "users": [{"id": "42", "username": "ada"}]}
        posted = client.post_room_message("deploys", "Deploy finished", sender_id="ci", sender_name="CI bot")
        assert posted["room"] == "deploys" and isinstance(posted["id"], int)
        frame = recv_type(ada, "chat_message")
        assert (frame["message"], frame["sender_id"], frame["sender_username"]) == ("Deploy finished", "ci", "CI bot")
        online = {user["user_id"]: user for user in client.online()}
        assert online[42]["name"] == "ada" and online[42]["connections"] == 1


def test_a_display_name_names_a_token_without_one(switchboard, client):
    assert client.set_user_name(77, "Grace Hopper") == {"id": 77, "name": "Grace Hopper"}
    with ws(switchboard, "/ws/rooms/names/", 77) as grace:
        assert recv(grace)["users"] == [{"id": "77", "username": "Grace Hopper"}]
    with pytest.raises(ValidationError) as raised:
        client.set_user_name(77, "")
    assert (raised.value.status, raised.value.message) == (422, "\"name\" must not be empty")


def test_consultations_members_and_conflicts(switchboard, client):
    created = client.create_conversation("consultation", [42, 7], id="c-1001", title="Reading with Ada")
    assert (created["id"], created["kind"], created["members"]) == ("c-1001", "consultation", [42, 7])
    assert client.get_conversation("consultation", "c-1001")["title"] == "Reading with Ada"
    with pytest.raises(ConflictError) as conflict:
        client.create_conversation("consultation", [42], id="c-1001")
    assert conflict.value.status == 409 and "c-1001" in conflict.value.message
    with ws(switchboard, "/ws/consultations/c-1001/", 7) as bob:
        assert recv(bob)["type"] == "connection_established"
        assert client.set_members("consultation", "c-1001", [42])["members"] == [42]
        with pytest.raises(ConnectionClosed) as closed:
            for _ in range(10):
                bob.recv(timeout=WAIT)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4003
    with pytest.raises(NotFoundError) as missing:
        client.get_conversation("consultation", "no-such-thing")
    assert missing.value.status == 404


def test_inbound_customer_messages_reach_the_agents_list(switchboard, client):
    with ws(switchboard, "/ws/conversations/", 42) as agent:
        assert recv(agent)["type"] == "conversations_list"
        answer = client.inbound(
            "telegram",
            {"external_id": "tg-555", "first_name": "John", "last_name": "Doe"},
            "Hi, my order has not arrived",
            members=[42],
        )
        assert answer["created_conversation"] is True
        frame = recv_type(agent, "new_customer_message")
        assert frame["conversation_id"] == answer["conversation_id"]
        assert frame["message"]["content"] == "Hi, my order has not arrived"
    conversation = client.get_conversation("support", answer["conversation_id"])
    assert conversation["customer"]["external_id"] == "tg-555"


def test_notifications_alerts_and_banking_messages_are_pushed(switchboard, client):
    with ws(switchboard, "/ws/notifications/", 5) as notifications:
        assert recv(notifications)["type"] == "connection_established"
        assert recv_type(notifications, "unread_count")["count"] == 0
        created = client.create_notification(5, "Leave Approved", "Approved for Jan 10th", category="hr", link="/hr/12")
        assert (created["user_id"], created["category"], created["is_read"]) == (5, "hr", False)
        frame = recv_type(notifications, "notification")
        assert frame["data"]["id"] == str(created["id"]) and frame["data"]["title"] == "Leave Approved"

    with ws(switchboard, "/ws/fraud-alerts/5/", 5) as alerts:
        alert = client.create_fraud_alert(5, "Suspicious transaction detected", "high")
        assert recv_type(alerts, "fraud_alert_update")["alert"]["id"] == alert["id"]
        resolved = client.resolve_fraud_alert(alert["id"])
        assert resolved["is_resolved"] is True
        assert recv_type(alerts, "fraud_alert_update")["alert"]["is_resolved"] is True
    with pytest.raises(ValidationError):
        client.create_fraud_alert(5, "x", "apocalyptic")
    with pytest.raises(NotFoundError):
        client.resolve_fraud_alert(999_999)

    with ws(switchboard, "/ws/messages/5/", 5) as inbox:
        message = client.create_message(5, "Account Update", "Your balance changed", thread_id="abc123")
        assert recv_type(inbox, "message_update")["message"]["id"] == message["id"]
        reply = client.create_message(5, "Re: Account Update", "Thanks", parent_message=message["id"])
        assert reply["thread_id"] == "abc123" and reply["parent_message"] == message["id"]
        assert recv_type(inbox, "message_update")["message"]["id"] == reply["id"]


def test_disconnect_closes_the_users_sockets(switchboard, client):
    with ws(switchboard, "/ws/notifications/", 9) as socket:
        recv(socket)
        assert client.disconnect_user(9) == {"user_id": 9, "disconnected": 1}
        with pytest.raises(ConnectionClosed) as closed:
            for _ in range(10):
                socket.recv(timeout=WAIT)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001


def test_errors_carry_the_apis_status_and_message(switchboard, client):
    with pytest.raises(AuthenticationError) as refused:
        Client(switchboard.api_url, "not-the-key").online()
    assert (refused.value.status, refused.value.message) == (401, "invalid API key")
    with pytest.raises(ValidationError) as invalid:
        client.create_notification(5, "", "no title")
    assert (invalid.value.status, invalid.value.message) == (422, "\"title\" must not be empty")
    assert invalid.value.attempts == 1, "a 422 is not tried again"


def test_the_idempotency_key_is_accepted_by_the_server(client):
    # switchboard accepts the header on every write (it is always sent); a key of the
    # caller's own is sent as given.
    first = client.create_notification(6, "Shipped", "Order 17 shipped", idempotency_key="order-17-shipped")
    assert first["title"] == "Shipped"


class FailingProxy:
    """In front of the real API: answers the first try of each request 503 with
    Retry-After (as switchboard does while it cannot store), without passing it on, and
    forwards the next tries unchanged; records every try's Idempotency-Key."""

    def __init__(self, upstream: str) -> None:
        target = urllib.parse.urlsplit(upstream)
        self.keys: List[Optional[str]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                key = self.headers.get("Idempotency-Key")
                first = key not in proxy.keys
                proxy.keys.append(key)
                if first:
                    raw = b'{"error": "could not store the request; try again later"}'
                    self.send_response(503)
                    self.send_header("Retry-After", "0")
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                    return
                upstream_conn = http.client.HTTPConnection(target.hostname, target.port, timeout=WAIT)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                upstream_conn.request("POST", self.path, body=body, headers=headers)
                answer = upstream_conn.getresponse()
                raw = answer.read()
                self.send_response(answer.status)
                self.send_header("Content-Type", answer.getheader("Content-Type", "application/json"))
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)
                upstream_conn.close()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


def test_a_retried_call_reaches_the_real_server_once_with_its_first_key(switchboard):
    proxy = FailingProxy(switchboard.api_url)
    try:
        client = Client(proxy.url, switchboard.api_key, timeout=5, backoff=0.05)
        with ws(switchboard, "/ws/v1/notifications/", 31) as socket:
            assert recv_type(socket, "unread_count")["count"] == 0
            created = client.create_notification(31, "Retried", "Sent twice, stored once")
            frame = recv_type(socket, "notification")
            assert (frame["id"], frame["title"]) == (created["id"], "Retried")
            assert recv_type(socket, "unread_count")["count"] == 1
            with pytest.raises(TimeoutError):
                socket.recv(timeout=0.5)
        assert len(proxy.keys) == 2 and proxy.keys[0] == proxy.keys[1]
        assert uuid.UUID(str(proxy.keys[0])).version == 4
    finally:
        proxy.server.shutdown()
        proxy.server.server_close()
