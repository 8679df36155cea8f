"""switchboard's server API from Python: what a Django backend calls instead of
``channel_layer.group_send``, and the check of the webhooks switchboard sends back.

    from switchboard_client import Client

    switchboard = Client("http://127.0.0.1:8001", api_key=os.environ["SWITCHBOARD_API_KEY"])
    switchboard.create_notification(42, "Leave Approved", "Your leave request was approved.")
"""

from .client import RETRY_STATUSES, Client, UserId, __version__
from .errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    NotFoundError,
    RateLimitError,
    SwitchboardError,
    TransportError,
    UnavailableError,
    ValidationError,
)
from .webhooks import HEADER, sign_webhook, verify_webhook

__all__ = [
    "APIError",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "ConflictError",
    "HEADER",
    "NotFoundError",
    "RETRY_STATUSES",
    "RateLimitError",
    "SwitchboardError",
    "TransportError",
    "UnavailableError",
    "UserId",
    "ValidationError",
    "__version__",
    "sign_webhook",
    "verify_webhook",
]
