#!/usr/bin/env python3
"""Smoke test of a "room chat" WebSocket server (the benchmark peers, or switchboard).

Usage: smoke_test.py [URL_BASE] [SECRET]
  URL_BASE  e.g. ws://127.0.0.1:8100 (default); loopback hosts only
  SECRET    HS256 secret (default: $PEER_JWT_SECRET or bench-secret)

Needs `websockets` and `PyJWT` (both in django/requirements.txt, so run it with
django/.venv/bin/python). Prints one line per check and ends with "N passed, M failed";
exits non-zero when a check failed.
"""
import argparse
import asyncio
import ipaddress
import json
import os
import re
import sys
import time
import uuid
import warnings
from urllib.parse import quote, urlsplit

import jwt
from jwt.warnings import InsecureKeyLengthWarning
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

warnings.simplefilter("ignore", InsecureKeyLengthWarning)

TIMEOUT = 5.0
TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
CHAT_KEYS = {"type", "message", "sender_username", "sender_id", "timestamp"}


class Results:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, name, ok, detail=""):
        if ok:
            self.passed += 1
            print(f"PASS {name}")
        else:
            self.failed += 1
            print(f"FAIL {name}" + (f": {detail}" if detail else ""))
        return ok


R = Results()


def mint(secret, claims, ttl=600):
    now = int(time.time())
    body = {"iat": now, "exp": now + ttl, "token_type": "access"}
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, secret, algorithm="HS256")


async def recv_json(ws, timeout=TIMEOUT):
    raw = await asyncio.wait_for(ws.recv(), timeout)
    return json.loads(raw)


async def recv_type(ws, kind, timeout=TIMEOUT):
    """Next frame of the given type, skipping others (returns None on timeout)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            return None
        try:
            frame = await recv_json(ws, left)
        except asyncio.TimeoutError:
            return None
        if frame.get("type") == kind:
            return frame


async def quiet(ws, seconds=0.5):
    """Frames that arrive within `seconds` (to check that nothing is sent)."""
    frames = []
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            return frames
        try:
            frames.append(await recv_json(ws, left))
        except asyncio.TimeoutError:
            return frames


async def open_and_read_intro(url, headers=None):
    """Connects; returns (ws, users_list_frame, history_frames)."""
    ws = await connect(url, additional_headers=headers, open_timeout=TIMEOUT, max_size=2**20)
    first = await recv_json(ws)
    history = []
    for frame in await quiet(ws, 0.4):
        history.append(frame)
    return ws, first, history


async def expect_close(url, code, name):
    try:
        async with connect(url, open_timeout=TIMEOUT) as ws:
            try:
                frame = await asyncio.wait_for(ws.recv(), TIMEOUT)
                R.check(name, False, f"got a frame instead of close {code}: {frame!r}")
                return
            except ConnectionClosed as e:
                got = e.rcvd.code if e.rcvd else None
                R.check(name, got == code, f"close code {got}, want {code}")
            except asyncio.TimeoutError:
                R.check(name, False, f"no close within {TIMEOUT}s")
    except ConnectionClosed as e:
        got = e.rcvd.code if e.rcvd else None
        R.check(name, got == code, f"close code {got}, want {code}")
    except Exception as e:  # handshake refused, etc.
        R.check(name, False, f"{type(e).__name__}: {e}")


def users_of(frame):
    return {(str(u.get("id")), u.get("username")) for u in frame.get("users", [])}


async def run(base, secret):
    room = "smoke-" + uuid.uuid4().hex[:12]
    alice_tok = mint(secret, {"user_id": 101, "name": "alice"})
    bob_tok = mint(secret, {"sub": "bob-uuid-1", "username": "bob"})

    chat = f"{base}/ws/chat/{room}/"
    alice_url = f"{chat}?token={quote(alice_tok)}"

    # -- alice connects: user list with herself, empty history
    a, first, hist = await open_and_read_intro(alice_url)
    R.check("first frame is room_users_list", first.get("type") == "room_users_list", repr(first))
    R.check("user list holds the user itself", users_of(first) == {("101", "alice")}, repr(first))
    R.check("user id keeps its JSON type (number)", first.get("users", [{}])[0].get("id") == 101, repr(first))
    R.check("new room has no history", hist == [], repr(hist))

    # -- bob connects through /ws/rooms/ without trailing slash, token in header
    b, first_b, _ = await open_and_read_intro(
        f"{base}/ws/rooms/{room}", headers={"Authorization": f"Bearer {bob_tok}"}
    )
    R.check(
        "bob (Bearer header, /ws/rooms/ no slash) gets both users",
        first_b.get("type") == "room_users_list" and users_of(first_b) == {("101", "alice"), ("bob-uuid-1", "bob")},
        repr(first_b),
    )
    join = await recv_type(a, "user_join")
    R.check(
        "alice gets user_join for bob",
        join == {"type": "user_join", "user_id": "bob-uuid-1", "username": "bob"},
        repr(join),
    )

    # -- a second connection of alice: no user_join to bob
    a2, first_a2, _ = await open_and_read_intro(alice_url)
    R.check("second connection of alice gets user list", first_a2.get("type") == "room_users_list", repr(first_a2))
    extra = [f for f in await quiet(b, 0.5) if f.get("type") == "user_join"]
    R.check("no user_join for a user's second connection", extra == [], repr(extra))

    # -- chat message reaches everyone, sender included
    await a.send(json.dumps({"message": "hello bob"}))
    for who, ws in (("alice", a), ("alice#2", a2), ("bob", b)):
        msg = await recv_type(ws, "chat_message")
        ok = (
            msg is not None
            and set(msg) == CHAT_KEYS
            and msg["message"] == "hello bob"
            and msg["sender_username"] == "alice"
            and msg["sender_id"] == 101
            and bool(TS_RE.match(msg["timestamp"]))
        )
        R.check(f"{who} receives chat_message with the right keys", ok, repr(msg))

    await b.send(json.dumps({"message": "hi alice"}))
    msg = await recv_type(a, "chat_message")
    R.check(
        "string sender_id kept as string",
        msg is not None and msg.get("sender_id") == "bob-uuid-1" and msg.get("sender_username") == "bob",
        repr(msg),
    )
    await recv_type(b, "chat_message")
    await recv_type(a2, "chat_message")

    # -- errors keep the connection
    for label, payload in (
        ("invalid JSON", "{not json"),
        ("missing message", json.dumps({"text": "x"})),
        ("empty message", json.dumps({"message": ""})),
        ("binary frame", b"\x00\x01binary"),
    ):
        await b.send(payload)
        try:
            frame = await recv_json(b)
        except Exception as e:  # noqa: BLE001
            frame = f"{type(e).__name__}: {e}"
        R.check(f"{label} -> {{'error': ...}}", isinstance(frame, dict) and set(frame) == {"error"}, repr(frame))
    await b.send(json.dumps({"message": "still here"}))
    msg = await recv_type(b, "chat_message")
    R.check("connection still works after errors", msg is not None and msg.get("message") == "still here", repr(msg))
    await recv_type(a, "chat_message")
    await recv_type(a2, "chat_message")

    # -- user_leave only when the last connection closes
    await a2.close()
    extra = [f for f in await quiet(b, 0.5) if f.get("type") == "user_leave"]
    R.check("no user_leave while alice has another connection", extra == [], repr(extra))
    await b.close()
    leave = await recv_type(a, "user_leave")
    R.check(
        "alice gets user_leave for bob",
        leave == {"type": "user_leave", "user_id": "bob-uuid-1", "username": "bob"},
        repr(leave),
    )

    # -- history on reconnect, oldest first
    c, first_c, hist = await open_and_read_intro(f"{base}/ws/chat/{room}?token={quote(bob_tok)}")
    R.check("reconnect: user list first", first_c.get("type") == "room_users_list", repr(first_c))
    R.check(
        "reconnect: history oldest first",
        [h.get("message") for h in hist] == ["hello bob", "hi alice", "still here"]
        and all(h.get("type") == "chat_message" and set(h) == CHAT_KEYS for h in hist),
        repr(hist),
    )
    R.check(
        "history keeps sender ids and names",
        [(h.get("sender_id"), h.get("sender_username")) for h in hist]
        == [(101, "alice"), ("bob-uuid-1", "bob"), ("bob-uuid-1", "bob")],
        repr(hist),
    )
    await c.close()
    await recv_type(a, "user_leave", 2)

    # -- history is capped at the last 50 messages
    for i in range(55):
        await a.send(json.dumps({"message": f"m{i}"}))
    last = None
    for _ in range(55):
        last = await recv_type(a, "chat_message")
    R.check("55 messages broadcast", last is not None and last.get("message") == "m54", repr(last))
    d, _, hist = await open_and_read_intro(f"{chat}?token={quote(bob_tok)}")
    R.check(
        "history holds the last 50 messages",
        [h.get("message") for h in hist] == [f"m{i}" for i in range(5, 55)],
        f"{len(hist)} frames, first {hist[:1]!r}",
    )
    await d.close()
    await a.close()

    # -- refused connections
    await expect_close(f"{chat}?token=not.a.token", 4001, "garbage token -> close 4001")
    await expect_close(f"{chat}", 4001, "missing token -> close 4001")
    await expect_close(f"{chat}?token={quote(mint('wrong-secret', {'user_id': 1}))}", 4001, "wrong secret -> close 4001")
    await expect_close(f"{chat}?token={quote(mint(secret, {'user_id': 1}, ttl=-60))}", 4001, "expired -> close 4001")
    await expect_close(
        f"{chat}?token={quote(mint(secret, {'user_id': 1, 'token_type': 'refresh'}))}",
        4001,
        "refresh token -> close 4001",
    )
    no_exp = jwt.encode({"user_id": 1}, secret, algorithm="HS256")
    await expect_close(f"{chat}?token={quote(no_exp)}", 4001, "token without exp -> close 4001")
    await expect_close(f"{base}/ws/chat/bad%20room!/?token={quote(alice_tok)}", 4000, "bad room name -> close 4000")
    await expect_close(f"{base}/ws/chat/{'x' * 101}/?token={quote(alice_tok)}", 4000, "101-char room -> close 4000")
    ws, first, _ = await open_and_read_intro(f"{base}/ws/chat/{'y' * 100}/?token={quote(alice_tok)}")
    R.check("100-char room name accepted", first.get("type") == "room_users_list", repr(first))
    await ws.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base", nargs="?", default="ws://127.0.0.1:8100")
    ap.add_argument("secret", nargs="?", default=os.environ.get("PEER_JWT_SECRET", "bench-secret"))
    ap.add_argument("--timeout", type=float, default=120.0, help="overall time limit in seconds")
    args = ap.parse_args()

    base = args.base.rstrip("/")
    parts = urlsplit(base)
    host = parts.hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if parts.scheme not in ("ws", "wss") or not loopback:
        print(f"smoke_test: {args.base} is not a ws:// URL on a loopback address", file=sys.stderr)
        sys.exit(2)

    try:
        asyncio.run(asyncio.wait_for(run(base, args.secret), args.timeout))
    except Exception as e:  # noqa: BLE001
        R.check("test run completed", False, f"{type(e).__name__}: {e}")
    print(f"{R.passed} passed, {R.failed} failed")
    sys.exit(1 if R.failed else 0)


if __name__ == "__main__":
    main()
