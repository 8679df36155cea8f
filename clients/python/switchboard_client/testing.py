"""A real switchboard for your backend's tests: the binary started on free loopback
ports with a throwaway database, a known JWT secret and API key, and HS256 tokens minted
with that secret (as SimpleJWT mints them).

    with run_switchboard("/usr/local/bin/switchboard") as sb:
        client = sb.client()
        token = sb.token(42)            # {"user_id": 42, "token_type": "access", ...}
        ws_url = f"{sb.ws_url}/ws/notifications/?token={token}"
"""

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Mapping, Optional

from .client import Client

_BANNER = re.compile(r"listening on ws://(\S+) \(server API on http://([^)\s]+)\)")


class Switchboard:
    """A running switchboard process (see :func:`run_switchboard`)."""

    def __init__(self, process: "subprocess.Popen[str]", ws: str, api: str, api_key: str, jwt_secret: str) -> None:
        self.process = process
        self.ws_url = f"ws://{ws}"
        self.api_url = f"http://{api}"
        self.api_key = api_key
        self.jwt_secret = jwt_secret
        self.log: List[str] = []

    def client(self, **options: Any) -> Client:
        """A :class:`Client` of this server's API."""
        return Client(self.api_url, self.api_key, **options)

    def token(self, user_id: Any, ttl: int = 600, **claims: Any) -> str:
        """An HS256 access token for ``user_id`` signed with the server's secret; extra
        ``claims`` (``username="ada"``) are added as given."""
        now = int(time.time())
        payload: Dict[str, Any] = {"token_type": "access", "user_id": user_id, "iat": now, "exp": now + ttl}
        payload.update(claims)
        return mint_hs256(self.jwt_secret, payload)

    def log_text(self) -> str:
        return "".join(self.log)


def mint_hs256(secret: str, claims: Mapping[str, Any]) -> str:
    """A compact HS256 JWT over ``claims``."""

    def part(value: Mapping[str, Any]) -> bytes:
        raw = json.dumps(value, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=")

    signing_input = part({"alg": "HS256", "typ": "JWT"}) + b"." + part(claims)
    mac = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + base64.urlsafe_b64encode(mac).rstrip(b"=")).decode()


@contextmanager
def run_switchboard(
    binary: str,
    env: Optional[Mapping[str, str]] = None,
    *,
    api_key: Optional[str] = None,
    jwt_secret: Optional[str] = None,
    start_timeout: float = 20.0,
) -> Iterator[Switchboard]:
    """Starts ``binary`` on ``127.0.0.1`` ports the kernel picks, in a temporary
    directory removed afterwards, and stops it (SIGTERM, then SIGKILL) on leaving.
    ``env`` adds or overrides ``SWITCHBOARD_*`` settings; the caller's own
    ``SWITCHBOARD_*`` variables are not passed on."""
    api_key = api_key or secrets.token_hex(16)
    jwt_secret = jwt_secret or secrets.token_hex(16)
    data_dir = tempfile.mkdtemp(prefix="switchboard-test-")
    settings = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    settings.update(
        {
            "SWITCHBOARD_LISTEN": "127.0.0.1:0",
            "SWITCHBOARD_API_LISTEN": "127.0.0.1:0",
            "SWITCHBOARD_DB": os.path.join(data_dir, "switchboard.db"),
            "SWITCHBOARD_API_KEY": api_key,
            "SWITCHBOARD_JWT_SECRET": jwt_secret,
            "SWITCHBOARD_LOG": "info",
        }
    )
    settings.update(env or {})
    process = subprocess.Popen(
        [binary, "serve"],
        cwd=data_dir,
        env=settings,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        server = _started(process, api_key, jwt_secret, start_timeout)
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(data_dir, ignore_errors=True)


def _started(process: "subprocess.Popen[str]", api_key: str, jwt_secret: str, limit: float) -> Switchboard:
    assert process.stdout is not None and process.stderr is not None
    log: List[str] = []
    drain_err = threading.Thread(target=_drain, args=(process.stderr, log), daemon=True)
    drain_err.start()
    found: List[str] = []

    def read_banner() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            found.append(line)
            if _BANNER.search(line):
                break

    reader = threading.Thread(target=read_banner, daemon=True)
    reader.start()
    reader.join(limit)
    match = _BANNER.search(found[-1]) if found else None
    if match is None:
        process.kill()
        process.wait()
        drain_err.join(2)
        raise RuntimeError(f"switchboard did not start: stdout {found!r}, log:\n{''.join(log)}")
    threading.Thread(target=_drain, args=(process.stdout, []), daemon=True).start()
    server = Switchboard(process, match.group(1), match.group(2), api_key, jwt_secret)
    server.log = log
    return server


def _drain(stream: Any, sink: List[str]) -> None:
    for line in stream:
        sink.append(line)
