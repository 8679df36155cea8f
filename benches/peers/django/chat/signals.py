"""Puts every new SQLite connection in WAL mode."""
from django.db.backends.signals import connection_created
from django.dispatch import receiver


@receiver(connection_created)
def sqlite_wal(sender, connection, **kwargs):
    if connection.vendor != "sqlite":
        return
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode=WAL;")
        # Same durability as the Node peer and switchboard: fsync at checkpoints only.
        cursor.execute("PRAGMA synchronous=NORMAL;")
