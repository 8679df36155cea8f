"""JWT authentication for WebSocket connections.

Reads an HS256 token from the `token` query parameter or an `Authorization: Bearer`
header and puts the user in scope["peer_user"] as {"id", "key", "name"}, or None when
the token is missing or invalid (the consumer then accepts and closes with 4001).
"""
import warnings
from urllib.parse import parse_qs

import jwt
from channels.middleware import BaseMiddleware
from django.conf import settings
from jwt.warnings import InsecureKeyLengthWarning

# The benchmark's default secret is short; PyJWT would warn on every verification.
warnings.simplefilter("ignore", InsecureKeyLengthWarning)

_DECODE_OPTIONS = {
    "require": ["exp"],
    # Keep ids "as given": a numeric `sub` is allowed (PyJWT would insist on a string).
    "verify_sub": False,
    "verify_jti": False,
}


def token_from_scope(scope):
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    for value in query.get("token", []):
        if value:
            return value
    for name, value in scope.get("headers", []):
        if name.lower() == b"authorization":
            parts = value.decode("latin-1").strip().split(None, 1)
            if len(parts) == 2 and parts[0].lower() == "bearer" and parts[1].strip():
                return parts[1].strip()
    return None


def user_from_token(token):
    if not token:
        return None
    try:
        claims = jwt.decode(token, settings.PEER_JWT_SECRET, algorithms=["HS256"], options=_DECODE_OPTIONS)
    except jwt.PyJWTError:
        return None
    if not isinstance(claims, dict):
        return None
    if "token_type" in claims and claims["token_type"] != "access":
        return None
    user_id = claims.get("user_id", claims.get("sub"))
    if isinstance(user_id, bool):
        return None
    if isinstance(user_id, int):
        key = str(user_id)
    elif isinstance(user_id, str) and user_id:
        key = user_id
    else:
        return None
    name = next(
        (v for v in (claims.get("name"), claims.get("username")) if isinstance(v, str) and v),
        key,
    )
    return {"id": user_id, "key": key, "name": name}


class JWTAuthMiddleware(BaseMiddleware):
    async def __call__(self, scope, receive, send):
        if scope.get("type") == "websocket":
            scope = dict(scope, peer_user=user_from_token(token_from_scope(scope)))
        return await super().__call__(scope, receive, send)
