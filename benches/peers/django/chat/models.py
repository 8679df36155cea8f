from django.db import models


class Message(models.Model):
    """One stored chat message; table messages(id, room, sender_id, sender_name, content, created_at)."""

    room = models.TextField()
    sender_id = models.TextField()
    sender_name = models.TextField()
    content = models.TextField()
    # ISO-8601 UTC with microseconds, exactly as broadcast (e.g. 2024-03-14T12:00:00.123456Z).
    created_at = models.TextField()

    class Meta:
        db_table = "messages"
        indexes = [models.Index(fields=["room", "id"], name="messages_room_id")]
