"""WebSocket routes of the chat example."""

from __future__ import annotations

from django.urls import re_path

from .consumers import RoomConsumer
from .rooms import ROOM_PATTERN

websocket_urlpatterns = [
    re_path(rf"^ws/rooms/(?P<room>{ROOM_PATTERN})/$", RoomConsumer.as_asgi()),
]
