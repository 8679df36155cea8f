"""The room-chat consumer: history and user list on connect, store-then-broadcast."""
import hashlib
import json
import re
from datetime import datetime, timezone

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from .models import Message

ROOM_RE = re.compile(r"[A-Za-z0-9_.-]{1,100}")
HISTORY_LIMIT = 50
CLOSE_BAD_ROOM = 4000
CLOSE_UNAUTHORIZED = 4001

# Presence of this (single) daphne process: room -> {user key: {"id", "name", "count"}}.
ROOMS = {}


def now_iso():
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def id_from_text(text):
    """Ids read back from the database are text; canonical integers go out as numbers."""
    if re.fullmatch(r"-?(0|[1-9][0-9]{0,15})", text) and abs(int(text)) <= 2**53 - 1:
        return int(text)
    return text


def group_name(room):
    """Channels group names are [A-Za-z0-9_.-], under 100 chars; room names up to 100."""
    if len(room) <= 90:
        return "room." + room
    return "room-h." + hashlib.sha1(room.encode()).hexdigest()


@database_sync_to_async
def store_message(room, user, text, created_at):
    Message.objects.create(
        room=room, sender_id=user["key"], sender_name=user["name"], content=text, created_at=created_at
    )


@database_sync_to_async
def load_history(room):
    rows = list(
        Message.objects.filter(room=room)
        .order_by("-id")
        .values_list("sender_id", "sender_name", "content", "created_at")[:HISTORY_LIMIT]
    )
    rows.reverse()
    return rows


class ChatConsumer(AsyncWebsocketConsumer):
    room = None
    user = None
    group = None

    async def connect(self):
        room = self.scope["url_route"]["kwargs"].get("room_name", "")
        if not ROOM_RE.fullmatch(room):
            await self.accept()
            await self.close(code=CLOSE_BAD_ROOM)
            return
        user = self.scope.get("peer_user")
        if user is None:
            await self.accept()
            await self.close(code=CLOSE_UNAUTHORIZED)
            return

        self.room, self.user = room, user
        self.group = group_name(room)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

        users = ROOMS.setdefault(room, {})
        entry = users.get(user["key"])
        if entry is None:
            users[user["key"]] = {"id": user["id"], "name": user["name"], "count": 1}
            await self.channel_layer.group_send(
                self.group,
                {
                    "type": "presence",
                    "frame": {"type": "user_join", "user_id": user["id"], "username": user["name"]},
                    "exclude": self.channel_name,
                },
            )
        else:
            entry["count"] += 1

        await self.send_json(
            {
                "type": "room_users_list",
                "users": [{"id": u["id"], "username": u["name"]} for u in users.values()],
            }
        )
        for sender_id, sender_name, content, created_at in await load_history(room):
            await self.send_json(
                {
                    "type": "chat_message",
                    "message": content,
                    "sender_username": sender_name,
                    "sender_id": id_from_text(sender_id),
                    "timestamp": created_at,
                }
            )

    async def disconnect(self, code):
        if self.user is None:
            return
        await self.channel_layer.group_discard(self.group, self.channel_name)
        users = ROOMS.get(self.room, {})
        entry = users.get(self.user["key"])
        if entry is not None:
            entry["count"] -= 1
            if entry["count"] <= 0:
                del users[self.user["key"]]
                await self.channel_layer.group_send(
                    self.group,
                    {
                        "type": "presence",
                        "frame": {"type": "user_leave", "user_id": self.user["id"], "username": self.user["name"]},
                        "exclude": None,
                    },
                )
        if not users:
            ROOMS.pop(self.room, None)

    async def receive(self, text_data=None, bytes_data=None):
        if self.user is None:
            return
        if text_data is None:
            await self.send_json({"error": "binary frames are not supported"})
            return
        try:
            data = json.loads(text_data)
        except ValueError:
            await self.send_json({"error": "invalid JSON"})
            return
        if not isinstance(data, dict):
            await self.send_json({"error": "expected a JSON object"})
            return
        text = data.get("message")
        if not isinstance(text, str) or not text.strip():
            await self.send_json({"error": "message is required and must be a non-empty string"})
            return
        created_at = now_iso()
        await store_message(self.room, self.user, text, created_at)  # stored before broadcast
        await self.channel_layer.group_send(
            self.group,
            {
                "type": "chat.message",
                "frame": {
                    "type": "chat_message",
                    "message": text,
                    "sender_username": self.user["name"],
                    "sender_id": self.user["id"],
                    "timestamp": created_at,
                },
            },
        )

    async def chat_message(self, event):
        await self.send_json(event["frame"])

    async def presence(self, event):
        if event.get("exclude") != self.channel_name:
            await self.send_json(event["frame"])

    async def send_json(self, content):
        await self.send(text_data=json.dumps(content, ensure_ascii=False))
