"""HTTP routes of the chat example."""

from __future__ import annotations

from chat import views
from chat.rooms import ROOM_PATTERN
from django.urls import path, re_path

urlpatterns = [
    path("", views.index, name="index"),
    re_path(rf"^rooms/(?P<room>{ROOM_PATTERN})/$", views.room, name="room"),
    re_path(rf"^rooms/(?P<room>{ROOM_PATTERN})/announce/$", views.announce, name="announce"),
]
