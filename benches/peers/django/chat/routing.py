from django.urls import re_path

from .consumers import ChatConsumer

# /ws/chat/{room}/ and /ws/rooms/{room}/, trailing slash optional. The room name is
# validated by the consumer, which closes with 4000 when it is not acceptable.
websocket_urlpatterns = [
    re_path(r"^ws/(?:chat|rooms)/(?P<room_name>[^/]*)/?$", ChatConsumer.as_asgi()),
]
