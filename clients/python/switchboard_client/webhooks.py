"""The check of a webhook request's ``Switchboard-Signature`` header (docs/webhooks.md).

switchboard signs every webhook request as Stripe does:
``Switchboard-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>``, the HMAC keyed with
``SWITCHBOARD_WEBHOOK_SECRET`` over ``"<t>.<raw body>"``.
"""

import hashlib
import hmac
import time
from typing import List, Optional, Union

#: The request header that carries the signature (Django: ``request.headers[HEADER]``).
HEADER = "Switchboard-Signature"

#: Signatures older or newer than this many seconds are refused as replays.
DEFAULT_TOLERANCE = 300


def verify_webhook(
    secret: Union[str, bytes],
    header: Optional[str],
    body: Union[bytes, str],
    tolerance: int = DEFAULT_TOLERANCE,
    now: Optional[float] = None,
) -> bool:
    """Whether ``header`` (the ``Switchboard-Signature`` value) signs ``body`` with
    ``secret`` at a time within ``tolerance`` seconds of ``now`` (the clock by default).

    Pass the raw request body exactly as received (Django: ``request.body``), not JSON
    parsed and dumped again. The comparison takes the same time whatever the bytes, and a
    header of any other shape is simply refused (``False``).
    """
    if not header:
        return False
    if isinstance(secret, str):
        secret = secret.encode()
    if isinstance(body, str):
        body = body.encode()
    timestamp: Optional[int] = None
    signatures: List[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t" and value.isdigit():
            timestamp = int(value)
        elif key == "v1":
            signatures.append(value)
    if timestamp is None:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        return False
    expected = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    # Every signature is compared (no early exit on the first), each in constant time.
    found = False
    for signature in signatures:
        if hmac.compare_digest(expected.encode(), signature.lower().encode("utf-8", "replace")):
            found = True
    return found


def sign_webhook(secret: Union[str, bytes], body: Union[bytes, str], timestamp: Optional[int] = None) -> str:
    """The ``Switchboard-Signature`` value switchboard would send for ``body`` at
    ``timestamp`` (now by default): for tests of a webhook view."""
    if isinstance(secret, str):
        secret = secret.encode()
    if isinstance(body, str):
        body = body.encode()
    t = int(time.time()) if timestamp is None else int(timestamp)
    mac = hmac.new(secret, str(t).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"
