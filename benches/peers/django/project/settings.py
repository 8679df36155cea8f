"""Settings of the Django/Channels peer (a switchboard benchmark baseline).

Env: PEER_DB (default ./peer-django.db), PEER_JWT_SECRET (default bench-secret).
"""
import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

# Not a secret: this peer serves no sessions, forms or cookies, only loopback benchmarks.
SECRET_KEY = "switchboard-bench-peer-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]", "::1"]

PEER_JWT_SECRET = os.environ.get("PEER_JWT_SECRET", "bench-secret")

INSTALLED_APPS = [
    "channels",
    "chat",
]

MIDDLEWARE = []
ROOT_URLCONF = "project.urls"
ASGI_APPLICATION = "project.asgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.path.abspath(os.environ.get("PEER_DB", "./peer-django.db")),
        # Keep the connection open (as a production deployment would); the default (0)
        # would reopen the SQLite file around every database_sync_to_async call.
        "CONN_MAX_AGE": None,
        "OPTIONS": {"timeout": 5},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels.layers.InMemoryChannelLayer",
        # The default capacity (100 queued messages per channel) silently drops
        # broadcasts to slow consumers under load; keep more, like a tuned deployment.
        "CONFIG": {"capacity": 1000, "expiry": 60},
    }
}

USE_TZ = True
TIME_ZONE = "UTC"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
