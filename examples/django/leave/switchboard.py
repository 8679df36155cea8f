"""The one switchboard client of the process (it holds no connection: safe to share)."""

from functools import lru_cache

from django.conf import settings
from switchboard_client import Client


@lru_cache(maxsize=None)
def switchboard() -> Client:
    return Client(settings.SWITCHBOARD_API_URL, settings.SWITCHBOARD_API_KEY, timeout=5, max_retries=3)
