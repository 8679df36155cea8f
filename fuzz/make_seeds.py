#!/usr/bin/env python3
"""Writes the committed seed corpora under fuzz/seeds/<target>/.

Run from anywhere: `python3 fuzz/make_seeds.py`. It rewrites every seed file it owns
(deterministically: the tokens expire in 2100 or long ago, never "now + 1 h") and
leaves other files in the seed folders alone. The secret, API key, issuer and audience
are the ones in fuzz/src/lib.rs.
"""

import base64
import hashlib
import hmac
import json
import os
import textwrap

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = os.path.join(HERE, "seeds")

JWT_SECRET = "fuzz-jwt-secret-0123456789abcdef"
API_KEY = "fuzz-api-key-0123456789abcdef"
ISSUER = "https://backend.example"
AUDIENCE = "switchboard"
FAR = 4102444800  # 2100-01-01
PAST = 1000


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(claims, secret=JWT_SECRET, header=None) -> str:
    header = header or {"alg": "HS256", "typ": "JWT"}
    message = b64(json.dumps(header, separators=(",", ":")).encode()) + "." + b64(
        json.dumps(claims, separators=(",", ":")).encode()
    )
    signature = hmac.new(secret.encode(), message.encode(), hashlib.sha256).digest()
    return message + "." + b64(signature)


def write(target: str, name: str, data: bytes) -> None:
    folder = os.path.join(SEEDS, target)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


BASE = {"iss": ISSUER, "aud": AUDIENCE, "exp": FAR}
TOKENS = {
    # valid for the `token` target's verifier (issuer and audience required)
    "simplejwt": jwt({**BASE, "user_id": 42, "token_type": "access", "username": "ada", "iat": 1700000000}),
    "sub_name": jwt({**BASE, "sub": "user-id", "name": "user123"}),
    "uuid_sub": jwt({**BASE, "sub": "7f1c3a52-9d7e-4b9a-8c61-2f0e5d4b3a10"}),
    # refused, each for one reason
    "expired": jwt({**BASE, "user_id": 42, "exp": PAST}),
    "refresh": jwt({**BASE, "user_id": 42, "token_type": "refresh"}),
    "no_exp": jwt({"iss": ISSUER, "aud": AUDIENCE, "user_id": 42}),
    "not_yet": jwt({**BASE, "user_id": 42, "nbf": FAR - 1}),
    "wrong_iss": jwt({**BASE, "iss": "https://evil.example", "user_id": 42}),
    "wrong_aud": jwt({**BASE, "aud": "someone-else", "user_id": 42}),
    "aud_list": jwt({**BASE, "aud": ["x", AUDIENCE], "user_id": 42}),
    "no_user": jwt({**BASE}),
    "bad_signature": jwt({**BASE, "user_id": 42}, secret="another-secret-entirely"),
    "alg_none": b64(b'{"alg":"none","typ":"JWT"}') + "." + b64(json.dumps({**BASE, "user_id": 42}).encode()) + ".",
    "alg_hs512": jwt({**BASE, "user_id": 42}, header={"alg": "HS512", "typ": "JWT"}),
}


def token_seeds() -> None:
    for name, token in TOKENS.items():
        write("token", f"query-{name}", f"token={token}".encode())
        write("token", f"header-{name}", b"\xff" + f"Bearer {token}".encode())
        write("token", f"raw-{name}", token.encode())
    valid = TOKENS["simplejwt"]
    write("token", "query-among-params", f"room=lobby&token={valid.replace('.', '%2E')}&x=1".encode())
    write("token", "query-empty-then-header", b"token=&a=b\xff" + f"bearer   {valid}  ".encode())
    write("token", "header-basic", b"\xffBasic dXNlcjpwYXNz")
    # Claims of a correctly signed token (the target's third use of an input).
    claims = {
        "claims-simplejwt": {**BASE, "user_id": 7, "token_type": "access", "username": "bob"},
        "claims-sub": {**BASE, "sub": "u-1", "name": "Ann"},
        "claims-expired": {**BASE, "user_id": 7, "exp": PAST},
        "claims-exp-string": {**BASE, "user_id": 7, "exp": "4102444800"},
        "claims-exp-float": {**BASE, "user_id": 7, "exp": 4102444800.5},
        "claims-big-id": {**BASE, "user_id": 18446744073709551615},
        "claims-negative-id": {**BASE, "user_id": -9223372036854775808},
        "claims-long-sub": {**BASE, "sub": "x" * 201},
        "claims-empty-name": {**BASE, "sub": "u-2", "name": "", "username": "fallback"},
        "claims-aud-array": {**BASE, "aud": [AUDIENCE, "other"], "user_id": 1},
    }
    for name, value in claims.items():
        write("token", name, json.dumps(value).encode())


PATHS = [
    "/ws/chat/lobby/",
    "/ws/rooms/general/",
    "/ws/consultations/c-1001/",
    "/ws/conversations/conv123/",
    "/ws/conversations/",
    "/ws/v1/chat/",
    "/ws/presence/",
    "/ws/notifications/",
    "/ws/v1/notifications/",
    "/ws/notifications/42/",
    "/ws/messages/42/",
    "/ws/fraud-alerts/42/",
]


def upgrade(path: str, extra: str = "") -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\n"
        "Host: 127.0.0.1:8000\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        f"{extra}"
        "\r\n"
    ).encode()


def api(method: str, path: str, body: str = "") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:8001\r\nAuthorization: Bearer {API_KEY}\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body.encode())}\r\n"
    return (head + "\r\n" + body).encode()


API_REQUESTS = {
    "healthz": ("GET", "/healthz", ""),
    "metrics": ("GET", "/metrics", ""),
    "online": ("GET", "/api/online", ""),
    "room-message": ("POST", "/api/rooms/lobby/messages", '{"message": "Deploy finished", "sender_id": "ci", "sender_name": "CI bot"}'),
    "conversation-consultation": (
        "POST",
        "/api/conversations",
        '{"kind": "consultation", "id": "c-1002", "title": "Reading with Ada", "members": [42, 7]}',
    ),
    "conversation-support": (
        "POST",
        "/api/conversations",
        '{"kind": "support", "id": "conv124", "priority": 1, "members": [42],\n'
        '       "customer": {"source": "telegram", "external_id": "tg-555", "first_name": "John", "last_name": "Doe"}}',
    ),
    "conversation-get": ("GET", "/api/conversations/support/conv123", ""),
    "conversation-members": ("PUT", "/api/conversations/support/conv123/members", '{"members": [1, 9]}'),
    "consultation-members": ("PUT", "/api/conversations/consultation/c-1001/members", '{"members": [5]}'),
    "inbound": (
        "POST",
        "/api/inbound",
        '{"source": "telegram", "customer": {"external_id": "tg-555", "first_name": "John", "last_name": "Doe"},\n'
        '       "content": "Hi, my order has not arrived", "members": [42]}',
    ),
    "inbound-conversation": (
        "POST",
        "/api/inbound",
        '{"source": "instagram", "customer": {"id": 77, "first_name": "Jo"}, "content": "hello", "conversation_id": "conv123"}',
    ),
    "notification": (
        "POST",
        "/api/notifications",
        '{"user_id": 1, "title": "Leave Approved", "message": "Your leave request for Jan 10th has been approved.",\n'
        '       "category": "hr", "link": "/hr/leave-applications/12"}',
    ),
    "fraud-alert": ("POST", "/api/fraud-alerts", '{"user_id": 1, "message": "Suspicious transaction detected", "severity": "high"}'),
    "fraud-alert-resolve": ("POST", "/api/fraud-alerts/1/resolve", ""),
    "banking-message": (
        "POST",
        "/api/messages",
        '{"user_id": 1, "subject": "Account Update", "body": "Your account balance has changed", "thread_id": "abc123"}',
    ),
    "banking-reply": ("POST", "/api/messages", '{"user_id": 1, "subject": "Re: Account Update", "body": "Thank you", "parent_message": 1}'),
    "disconnect": ("POST", "/api/users/5/disconnect", ""),
}


def http_seeds() -> None:
    valid = TOKENS["simplejwt"]
    for path in PATHS:
        name = path.strip("/").replace("/", "_")
        write("http_request", f"upgrade-query-{name}", upgrade(f"{path}?token={valid}"))
        write("http_request", f"upgrade-header-{name}", upgrade(path, f"Authorization: Bearer {valid}\r\n"))
    write(
        "http_request",
        "upgrade-browser-origin",
        upgrade(
            "/ws/chat/a%20b/?x=1&token=" + valid.replace(".", "%2E"),
            "Origin: https://app.example\r\nSec-WebSocket-Protocol: chat\r\nConnection: keep-alive\r\n",
        ),
    )
    write("http_request", "upgrade-no-slash", upgrade(f"/ws/v1/chat?token={valid}"))
    write("http_request", "plain-get", b"GET /ws/chat/x/ HTTP/1.1\r\nHost: x\r\n\r\n")
    write("http_request", "chunked-post", b"POST /api/inbound HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    for name in ["notification", "inbound", "conversation-support", "banking-reply"]:
        write("http_request", f"api-{name}", api(*API_REQUESTS[name]))


def api_seeds() -> None:
    for name, request in API_REQUESTS.items():
        write("api_request", name, api(*request))
    write("api_request", "no-key", b"GET /api/online HTTP/1.1\r\nHost: x\r\n\r\n")
    write("api_request", "wrong-method", api("DELETE", "/api/notifications"))


def doc(block: str) -> bytes:
    """A JSON block as a seed document shows it, without the document's indentation."""
    return textwrap.dedent(block).strip("\n").encode()


def compact(value) -> bytes:
    """What `JSON.stringify(value)` sends."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


# Selector bytes: the index of the session in switchboard_fuzz::SESSIONS.
ROOMS, CONSULTATION, SUPPORT, LIST, DIRECT, PRESENCE, BANKING, FRAUD, USER_NOTIFS, NOTIFS, V1_NOTIFS = range(11)
BOB_DIRECT, BOB_ROOMS, BOB_CONSULTATION, BOB_SUPPORT, BOB_LIST = range(11, 16)

FRAMES = [
    # 004, room chat
    ("004-message", ROOMS, doc('''
        {
          "message": "Hello world!"
        }''')),
    ("004-message-compact", ROOMS, b'{"message": "Hello world!"}'),
    ("004-message-hi", ROOMS, b'{ "message": "Hi!" }'),
    ("004-bob-message", BOB_ROOMS, b'{"message": "Hi!"}'),
    # 001, consultation chat
    ("001-chat-message", CONSULTATION, doc('''
        {
          "type": "chat_message",
          "message": "Hello, how can I help?"
        }''')),
    ("001-chat-message-compact", CONSULTATION, b'{"type": "chat_message", "message": "Hello, how can I help?"}'),
    ("001-typing", CONSULTATION, doc('''
        {
          "type": "typing",
          "is_typing": true
        }''')),
    ("001-typing-compact", CONSULTATION, b'{"type": "typing", "is_typing": true}'),
    ("001-read-receipt", CONSULTATION, doc('''
        {
          "type": "read_receipt",
          "message_id": "uuid"
        }''')),
    ("001-read-receipt-compact", CONSULTATION, b'{"type": "read_receipt", "message_id": "uuid"}'),
    ("001-bob-read-receipt-id", BOB_CONSULTATION, b'{"type": "read_receipt", "message_id": "3"}'),
    ("001-send-helper", CONSULTATION, compact({"type": "chat_message", "message": "Hello!"})),
    # 001, notifications
    ("001-mark-read", NOTIFS, doc('''
        {
          "type": "mark_read",
          "notification_id": "uuid"
        }''')),
    ("001-mark-read-compact", NOTIFS, b'{"type":"mark_read","notification_id":"uuid"}'),
    ("001-mark-read-id", NOTIFS, b'{"type":"mark_read","notification_id":"1"}'),
    ("001-presence", PRESENCE, b'{"type": "ping"}'),
    # 002, support chat: JSON.stringify of the document's objects
    ("002-chat-message", SUPPORT, compact({"type": "chat_message", "content": "Hello, how can I help you?"})),
    ("002-typing", SUPPORT, compact({"type": "typing", "is_typing": True})),
    ("002-mark-read", SUPPORT, compact({"type": "mark_read"})),
    ("002-bob-chat-message", BOB_SUPPORT, compact({"type": "chat_message", "content": "Hello, how can I help you?"})),
    # 002, conversation list
    ("002-get-conversations", LIST, compact({"type": "get_conversations"})),
    ("002-refresh-conversations", LIST, compact({"type": "refresh_conversations"})),
    ("002-bob-get-conversations", BOB_LIST, compact({"type": "get_conversations"})),
    # 003, direct chat
    ("003-chat-message", DIRECT, doc('''
        {
          "type": "chat_message",
          "message": "Hello, are you available?",
          "recipient_id": 5
        }''')),
    ("003-mark-read", DIRECT, doc('''
        {
          "type": "mark_read",
          "sender_id": 5
        }''')),
    ("003-typing", DIRECT, doc('''
        {
          "type": "typing",
          "recipient_id": 5
        }''')),
    ("003-chat-message-compact", DIRECT, compact({"type": "chat_message", "message": "Hello, are you available?", "recipient_id": 5})),
    ("003-bob-chat-message", BOB_DIRECT, compact({"type": "chat_message", "message": "Yes!", "recipient_id": 1})),
    ("003-bob-mark-read", BOB_DIRECT, compact({"type": "mark_read", "sender_id": 1})),
    ("003-v1-mark-read", V1_NOTIFS, compact({"type": "mark_read", "notification_id": 2})),
    # 000, banking
    ("000-mark-read", BANKING, doc('''
        {
          "type": "mark_read",
          "message_id": 123
        }''')),
    ("000-mark-read-js", BANKING, compact({"type": "mark_read", "message_id": 123})),
    ("000-mark-read-reply", BANKING, compact({"type": "mark_read", "message_id": 2})),
    ("000-notification-mark-read", USER_NOTIFS, compact({"type": "mark_read", "notification_id": 1})),
    ("000-fraud-alerts", FRAUD, b"{}"),
    # not JSON, not an object
    ("bad-json-support", SUPPORT, b"{'type': 'chat_message'"),
    ("bad-array-rooms", ROOMS, b'["message"]'),
]


def frame_seeds() -> None:
    for name, selector, text in FRAMES:
        write("endpoint_frames", name, bytes([selector]) + text)


if __name__ == "__main__":
    token_seeds()
    http_seeds()
    api_seeds()
    frame_seeds()
    for target in sorted(os.listdir(SEEDS)):
        print(target, len(os.listdir(os.path.join(SEEDS, target))))
