"""The exceptions the client raises: the API's answer (status and its JSON error
message), or why no answer came."""

from typing import Any, Dict, Optional, Type


class SwitchboardError(Exception):
    """Anything that went wrong talking to switchboard's server API."""


class TransportError(SwitchboardError):
    """No HTTP answer: the connection was refused or reset, or the request timed out,
    on every try. ``attempts`` says how many were made; the last cause is chained."""

    def __init__(self, message: str, attempts: int) -> None:
        super().__init__(message)
        self.attempts = attempts


class APIError(SwitchboardError):
    """The server API answered with an error status.

    ``status`` is the HTTP status, ``message`` the ``"error"`` of its JSON body
    (``{"error": "..."}``), ``body`` the whole parsed body (or the raw text when it was
    not JSON), ``retry_after`` the ``Retry-After`` header in seconds, when given, and
    ``attempts`` how many tries were made.
    """

    def __init__(
        self,
        status: int,
        message: str,
        body: Any = None,
        retry_after: Optional[float] = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.body = body
        self.retry_after = retry_after
        self.attempts = attempts


class BadRequestError(APIError):
    """400: malformed JSON or an ambiguous request."""


class AuthenticationError(APIError):
    """401: a missing or wrong API key."""


class NotFoundError(APIError):
    """404: no such route, conversation, alert or message."""


class ConflictError(APIError):
    """409: a conversation with that kind and id exists."""


class ValidationError(APIError):
    """422: a field is missing, of the wrong type, or refused."""


class RateLimitError(APIError):
    """429: over a rate limit."""


class UnavailableError(APIError):
    """503: switchboard cannot store the request now (a full disk, too many pending
    writes); nothing of it was stored. Retried by the client until its tries run out."""


ERRORS_BY_STATUS: Dict[int, Type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    404: NotFoundError,
    409: ConflictError,
    422: ValidationError,
    429: RateLimitError,
    503: UnavailableError,
}


def api_error(
    status: int, body: Any, retry_after: Optional[float] = None, attempts: int = 1
) -> APIError:
    """The exception for an error answer, of the class its status has."""
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        message = body["error"]
    elif isinstance(body, str) and body:
        message = body
    else:
        message = f"HTTP {status}"
    cls = ERRORS_BY_STATUS.get(status, APIError)
    return cls(status, message, body=body, retry_after=retry_after, attempts=attempts)
