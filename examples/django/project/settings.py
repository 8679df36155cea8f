"""A minimal Django project whose WebSockets are served by switchboard: no Channels, no
ASGI, no channel layer. Its settings come from the environment, as a deployment's do."""

import os
from datetime import timedelta
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "dev-only-insecure-secret-key-change-me")
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "rest_framework",
    "leave",
]
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
ROOT_URLCONF = "project.urls"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_DB", str(BASE_DIR / "db.sqlite3")),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework_simplejwt.authentication.JWTAuthentication"],
}

# switchboard verifies the access tokens this project issues: the same HS256 key on both
# sides (switchboard's SWITCHBOARD_JWT_SECRET, at least 16 characters). SimpleJWT's
# defaults already match the rest: `user_id` claim, `token_type: "access"`, `exp`.
SIMPLE_JWT = {
    "SIGNING_KEY": os.environ.get("SWITCHBOARD_JWT_SECRET", SECRET_KEY),
    "ALGORITHM": "HS256",
    "USER_ID_CLAIM": "user_id",
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=15),
    # Adds `username` to the tokens /api/token/ issues: rooms show it.
    "TOKEN_OBTAIN_SERIALIZER": "leave.tokens.TokenObtainPairWithNameSerializer",
}

# Where the signals push to: switchboard's server API and its key.
SWITCHBOARD_API_URL = os.environ.get("SWITCHBOARD_API_URL", "http://127.0.0.1:8001")
SWITCHBOARD_API_KEY = os.environ.get("SWITCHBOARD_API_KEY", "")

LOGGING = {
    "version": 1,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"leave": {"handlers": ["console"], "level": "INFO"}},
}
