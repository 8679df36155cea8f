"""The server API client: one method per route of switchboard's server API (README.md,
"Server API"), over the standard library's ``urllib``."""

import email.utils
import json
import logging
import random
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

from .errors import APIError, SwitchboardError, TransportError, api_error

__version__ = "0.1.0"

log = logging.getLogger("switchboard_client")

#: A user id as your tokens carry it: an integer or a non-empty string.
UserId = Union[int, str]
JSON = Dict[str, Any]

#: Statuses tried again: the server failed or could not store the request now.
RETRY_STATUSES = frozenset({500, 502, 503, 504})

#: Methods sent with an ``Idempotency-Key``: those that create or change something.
WRITE_METHODS = frozenset({"POST", "PUT"})


class Client:
    """A client of switchboard's server API.

    ``base_url`` is the API listener (``SWITCHBOARD_API_LISTEN``, by default
    ``http://127.0.0.1:8001``) and ``api_key`` its Bearer key (``SWITCHBOARD_API_KEY``).

    Every request has a ``timeout`` (seconds, for connecting and for each read). A
    request that gets no answer (refused, reset, timed out) or a 500, 502, 503 or 504 is
    tried again up to ``max_retries`` more times, after ``Retry-After`` when the answer
    has one (capped at ``max_backoff``), else after an exponential backoff from
    ``backoff`` seconds with jitter. Every ``POST`` and ``PUT`` carries an
    ``Idempotency-Key`` header: a uuid4 made once per method call (or the
    ``idempotency_key`` you pass) and sent unchanged with each of its retries, so that
    a server which honours it stores a retried request once.

    An error answer raises an :class:`~switchboard_client.APIError` (of a subclass by
    status: ``ValidationError`` for 422, ``ConflictError`` for 409, ...) carrying the
    status and the API's error message; no answer after the last try raises
    :class:`~switchboard_client.TransportError`.

    The API is meant to be private (loopback or a private network): proxies from the
    environment are not used.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8001",
        api_key: str = "",
        *,
        timeout: float = 10.0,
        max_retries: int = 3,
        backoff: float = 0.25,
        max_backoff: float = 30.0,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http:// or https:// URL, not {base_url!r}")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if max_retries < 0:
            raise ValueError("max_retries must be 0 or more")
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    # Health and metrics.

    def health(self) -> JSON:
        """``GET /healthz``: ``{"status": "ok"}``, or ``{"status": "error", "store": ...}``
        while the store cannot write (a 503, returned rather than raised, and not
        retried)."""
        status, body, _ = self._send_once("GET", "/healthz", None, authorize=False)
        if status not in (200, 503) or not isinstance(body, dict):
            raise api_error(status, body)
        return body

    def metrics(self) -> str:
        """``GET /metrics``: the Prometheus text."""
        return str(self._call("GET", "/metrics", expect_json=False))

    # Presence.

    def online(self) -> List[JSON]:
        """``GET /api/online``: users with at least one open WebSocket
        (``user_id``, ``name``, ``connections``)."""
        return list(self._call("GET", "/api/online")["users"])

    # Rooms.

    def post_room_message(
        self,
        room: str,
        message: str,
        *,
        sender_id: Optional[UserId] = None,
        sender_name: Optional[str] = None,
        idempotency_key: Optional[str] = None,
    ) -> JSON:
        """``POST /api/rooms/{room}/messages``: stored, then broadcast to the room as a
        ``chat_message`` (the sender defaults to ``system``). Returns ``id``, ``room``,
        ``created_at``."""
        body: JSON = {"message": message}
        _put(body, "sender_id", sender_id)
        _put(body, "sender_name", sender_name)
        return dict(self._call("POST", f"/api/rooms/{_seg(room)}/messages", body, idempotency_key))

    # Member-only conversations (001 consultations, 002 support).

    def create_conversation(
        self,
        kind: str,
        members: Iterable[UserId],
        *,
        id: Optional[str] = None,
        title: Optional[str] = None,
        status: Optional[str] = None,
        priority: Optional[int] = None,
        customer: Optional[Mapping[str, Any]] = None,
        idempotency_key: Optional[str] = None,
    ) -> JSON:
        """``POST /api/conversations``: a ``"consultation"`` or ``"support"``
        conversation with its members (an existing ``id`` raises ``ConflictError``).
        Returns the conversation."""
        body: JSON = {"kind": kind, "members": list(members)}
        _put(body, "id", id)
        _put(body, "title", title)
        _put(body, "status", status)
        _put(body, "priority", priority)
        _put(body, "customer", dict(customer) if customer is not None else None)
        return dict(self._call("POST", "/api/conversations", body, idempotency_key)["conversation"])

    def get_conversation(self, kind: str, id: str) -> JSON:
        """``GET /api/conversations/{kind}/{id}``: the conversation with its members."""
        return dict(self._call("GET", f"/api/conversations/{_seg(kind)}/{_seg(id)}")["conversation"])

    def set_members(
        self, kind: str, id: str, members: Iterable[UserId], *, idempotency_key: Optional[str] = None
    ) -> JSON:
        """``PUT /api/conversations/{kind}/{id}/members``: replaces the members; removed
        members' open sockets on it close with 4003. Returns the conversation."""
        path = f"/api/conversations/{_seg(kind)}/{_seg(id)}/members"
        return dict(self._call("PUT", path, {"members": list(members)}, idempotency_key)["conversation"])

    def inbound(
        self,
        source: str,
        customer: Mapping[str, Any],
        content: str,
        *,
        conversation_id: Optional[str] = None,
        members: Optional[Iterable[UserId]] = None,
        idempotency_key: Optional[str] = None,
    ) -> JSON:
        """``POST /api/inbound``: a customer's message from an external platform
        (``customer`` has ``external_id`` and optionally ``first_name``, ``last_name``,
        ``profile_picture``). Returns ``conversation_id``, ``created_conversation`` and
        ``message``."""
        body: JSON = {"source": source, "customer": dict(customer), "content": content}
        _put(body, "conversation_id", conversation_id)
        _put(body, "members", list(members) if members is not None else None)
        return dict(self._call("POST", "/api/inbound", body, idempotency_key))

    # Notifications, alerts, banking messages.

    def create_notification(
        self,
        user_id: UserId,
        title: str,
        message: str,
        *,
        category: Optional[str] = None,
        link: Optional[str] = None,
        idempotency_key: Optional[str] = None,
    ) -> JSON:
        """``POST /api/notifications``: stored, then pushed to the user's notification
        sockets, now or when they next connect (``category`` defaults to ``system``).
        Returns the notification."""
        body: JSON = {"user_id": user_id, "title": title, "message": message}
        _put(body, "category", category)
        _put(body, "link", link)
        return dict(self._call("POST", "/api/notifications", body, idempotency_key)["notification"])

    def create_fraud_alert(
        self, user_id: UserId, message: str, severity: str, *, idempotency_key: Optional[str] = None
    ) -> JSON:
        """``POST /api/fraud-alerts``: ``severity`` is ``low``, ``medium``, ``high`` or
        ``critical``. Returns the alert."""
        body: JSON = {"user_id": user_id, "message": message, "severity": severity}
        return dict(self._call("POST", "/api/fraud-alerts", body, idempotency_key)["alert"])

    def resolve_fraud_alert(self, alert_id: int, *, idempotency_key: Optional[str] = None) -> JSON:
        """``POST /api/fraud-alerts/{id}/resolve``: resolves once; again changes nothing.
        Returns the alert."""
        path = f"/api/fraud-alerts/{_seg(alert_id)}/resolve"
        return dict(self._call("POST", path, None, idempotency_key)["alert"])

    def create_message(
        self,
        user_id: UserId,
        subject: str,
        body: str,
        *,
        thread_id: Optional[str] = None,
        parent_message: Optional[int] = None,
        idempotency_key: Optional[str] = None,
    ) -> JSON:
        """``POST /api/messages``: a banking message, or a reply (``parent_message``, the
        same user's) in its parent's thread. Returns the message."""
        request: JSON = {"user_id": user_id, "subject": subject, "body": body}
        _put(request, "thread_id", thread_id)
        _put(request, "parent_message", parent_message)
        return dict(self._call("POST", "/api/messages", request, idempotency_key)["message"])

    # Users.

    def set_user_name(self, user_id: UserId, name: str, *, idempotency_key: Optional[str] = None) -> JSON:
        """``PUT /api/users/{id}``: the display name shown for a user whose token has
        none, from their next connection on. Returns ``{"id": ..., "name": ...}``."""
        return dict(self._call("PUT", f"/api/users/{_seg(user_id)}", {"name": name}, idempotency_key)["user"])

    def disconnect_user(self, user_id: UserId, *, idempotency_key: Optional[str] = None) -> JSON:
        """``POST /api/users/{id}/disconnect``: closes every connection of the user (a
        logout). Returns ``user_id`` and ``disconnected`` (how many)."""
        return dict(self._call("POST", f"/api/users/{_seg(user_id)}/disconnect", None, idempotency_key))

    # The transport.

    def _call(
        self,
        method: str,
        path: str,
        body: Optional[JSON] = None,
        idempotency_key: Optional[str] = None,
        *,
        expect_json: bool = True,
    ) -> Any:
        """One logical call, tried up to ``1 + max_retries`` times; returns the parsed
        answer of a 2xx, else raises."""
        headers: Dict[str, str] = {}
        if method in WRITE_METHODS:
            headers["Idempotency-Key"] = idempotency_key or str(uuid.uuid4())
        attempt = 0
        while True:
            attempt += 1
            try:
                status, answer, retry_after_header = self._send_once(method, path, body, headers=headers)
            except TransportError as e:
                if attempt > self.max_retries:
                    raise TransportError(f"{method} {path}: {e} (after {attempt} tries)", attempt) from e.__cause__
                delay = self._backoff_delay(attempt)
                log.warning("%s %s: %s; trying again in %.2f s", method, path, e, delay)
                time.sleep(delay)
                continue
            if 200 <= status < 300:
                if expect_json and not isinstance(answer, dict):
                    raise APIError(status, "the answer is not a JSON object", body=answer, attempts=attempt)
                return answer
            retry_after = _retry_after(retry_after_header)
            if status in RETRY_STATUSES and attempt <= self.max_retries:
                delay = self._backoff_delay(attempt) if retry_after is None else min(retry_after, self.max_backoff)
                log.warning("%s %s: HTTP %d; trying again in %.2f s", method, path, status, delay)
                time.sleep(delay)
                continue
            raise api_error(status, answer, retry_after=retry_after, attempts=attempt)

    def _send_once(
        self,
        method: str,
        path: str,
        body: Optional[JSON],
        *,
        authorize: bool = True,
        headers: Optional[Mapping[str, str]] = None,
    ) -> Tuple[int, Any, Optional[str]]:
        """One HTTP request: its status, parsed body (JSON, else text) and
        ``Retry-After`` header; no answer at all raises ``TransportError`` (with the cause
        chained)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        request.add_header("Accept", "application/json")
        request.add_header("User-Agent", f"switchboard-client-python/{__version__}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if authorize:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return response.status, _parse(response.read()), response.headers.get("Retry-After")
        except urllib.error.HTTPError as e:
            # An error status is an answer, not a failure to get one.
            try:
                raw = e.read()
            except (OSError, ValueError):
                raw = b""
            finally:
                e.close()
            return e.code, _parse(raw), e.headers.get("Retry-After")
        except (urllib.error.URLError, OSError, ValueError) as e:
            # Refused, reset, timed out, or an answer that is not HTTP (http.client's
            # errors are OSError or ValueError subclasses, or wrapped in URLError).
            reason = getattr(e, "reason", e)
            raise TransportError(f"{method} {self.base_url}{path}: {reason}", 1) from e
        except Exception as e:  # http.client.HTTPException and kin: a broken answer
            if isinstance(e, SwitchboardError):
                raise
            raise TransportError(f"{method} {self.base_url}{path}: {e!r}", 1) from e

    def _backoff_delay(self, attempt: int) -> float:
        """Exponential backoff from ``backoff``, each wait between half and all of it."""
        full = min(self.max_backoff, self.backoff * (2 ** (attempt - 1)))
        return random.uniform(full / 2, full)


def _put(body: JSON, key: str, value: Any) -> None:
    if value is not None:
        body[key] = value


def _seg(value: Union[int, str]) -> str:
    """A path segment, percent-encoded."""
    text = str(value)
    if not text:
        raise ValueError("an id in a path must not be empty")
    return urllib.parse.quote(text, safe="")


def _parse(raw: bytes) -> Any:
    text = raw.decode("utf-8", "replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def _retry_after(value: Optional[str]) -> Optional[float]:
    """``Retry-After`` in seconds: a number of seconds, or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())
