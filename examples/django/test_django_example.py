"""The example end to end: a Django model save produces the notification that a
WebSocket client, holding a token that this Django project's SimpleJWT minted, receives
from the real switchboard binary."""

import base64
import json
import os
import secrets
import sys
from datetime import date
from typing import Any, Dict

import pytest
from websockets.sync.client import ClientConnection, connect

from switchboard_client.testing import run_switchboard

HERE = os.path.dirname(os.path.abspath(__file__))
WAIT = 10


@pytest.fixture(scope="module")
def stack(binary, tmp_path_factory):
    """switchboard and the Django project sharing one JWT secret and the API key."""
    jwt_secret = secrets.token_urlsafe(32)
    with run_switchboard(binary, jwt_secret=jwt_secret) as sb:
        os.environ.update(
            {
                "DJANGO_SETTINGS_MODULE": "project.settings",
                "DJANGO_DB": str(tmp_path_factory.mktemp("django") / "db.sqlite3"),
                "SWITCHBOARD_JWT_SECRET": jwt_secret,
                "SWITCHBOARD_API_URL": sb.api_url,
                "SWITCHBOARD_API_KEY": sb.api_key,
            }
        )
        sys.path.insert(0, HERE)
        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", verbosity=0)
        yield sb


def claims_of(token: str) -> Dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def recv_type(socket: ClientConnection, kind: str) -> Dict[str, Any]:
    for _ in range(50):
        frame = json.loads(socket.recv(timeout=WAIT))
        if frame.get("type") == kind:
            return frame
    raise AssertionError(f"no {kind} frame")


def test_a_model_save_notifies_the_connected_user(stack):
    from django.contrib.auth.models import User
    from django.test import Client as HttpClient
    from leave.models import LeaveRequest

    ada = User.objects.create_user("ada", password="correct horse", first_name="Ada", last_name="Lovelace")
    # The token the frontend gets from the project's own login route.
    answer = HttpClient().post("/api/token/", {"username": "ada", "password": "correct horse"})
    assert answer.status_code == 200, answer.content
    access = answer.json()["access"]
    claims = claims_of(access)  # SimpleJWT 5.5 writes the id as a string: switchboard takes both
    assert (claims["user_id"], claims["username"], claims["token_type"]) == (str(ada.pk), "ada", "access")

    with connect(f"{stack.ws_url}/ws/v1/notifications/?token={access}", open_timeout=WAIT) as socket:
        assert recv_type(socket, "unread_count")["count"] == 0
        leave = LeaveRequest.objects.create(employee=ada, starts_on=date(2026, 1, 10))  # pending: no one told
        leave.status = LeaveRequest.APPROVED
        leave.save()
        frame = recv_type(socket, "notification")
        assert frame["title"] == "Leave Approved", frame
        assert frame["message"] == "Your leave request for Jan 10 has been approved."
        assert (frame["category"], frame["link"]) == ("hr", f"/hr/leave-applications/{leave.pk}")
        assert recv_type(socket, "unread_count")["count"] == 1, "the pending save sent nothing"

    # The token's username names Ada in a room.
    with connect(f"{stack.ws_url}/ws/rooms/hr/?token={access}", open_timeout=WAIT) as room:
        assert recv_type(room, "room_users_list")["users"] == [{"id": str(ada.pk), "username": "ada"}]


def test_a_default_token_is_named_by_the_display_name_route(stack):
    from django.contrib.auth.models import User
    from rest_framework_simplejwt.tokens import AccessToken

    # A backend that cannot change its tokens: SimpleJWT's default access token has no
    # name, and the post_save signal on User set the display name instead.
    bob = User.objects.create_user("bob", password="pw", first_name="Bob", last_name="Builder")
    token = str(AccessToken.for_user(bob))
    assert "username" not in claims_of(token)
    with connect(f"{stack.ws_url}/ws/rooms/site/?token={token}", open_timeout=WAIT) as room:
        assert recv_type(room, "room_users_list")["users"] == [{"id": str(bob.pk), "username": "Bob Builder"}]
