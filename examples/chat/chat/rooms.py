"""What a room is: a name, the channel layer group behind it, and the messages sent to it.

The consumer, the view and the management command all build messages here, so a message
looks the same to the browser whichever process or code path sent it.
"""

from __future__ import annotations

import os
import re
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings

# Room names become part of group names, which the layer restricts to ASCII letters,
# digits, '-', '_' and '.' (under 100 characters); '\w' would let Unicode through.
ROOM_PATTERN = r"[A-Za-z0-9_-]{1,50}"
_ROOM = re.compile(ROOM_PATTERN)

MAX_NAME = 40
MAX_TEXT = 2000


def is_room(name: str) -> bool:
    """Whether ``name`` is a valid room name."""
    return _ROOM.fullmatch(name) is not None


def group_for(room: str) -> str:
    """The channel layer group of a room."""
    if not is_room(room):
        raise ValueError(f"not a room name: {room!r}")
    return f"chat.{room}"


def worker_label() -> str:
    """This server process, as the page shows it (the pid is read now: servers fork)."""
    return f"{settings.WORKER_NAME}, pid {os.getpid()}"


def clean(text: Any, limit: int) -> str:
    """One line of printable text, at most ``limit`` characters."""
    if not isinstance(text, str):
        return ""
    text = " ".join(text.split())
    return text[:limit]


def chat_event(*, name: str, text: str, via: str, worker: str | None) -> dict[str, Any]:
    """The group message every member's consumer turns into one line in the page.

    ``worker`` is the server process that sent it (``worker_label()``), or None when it
    comes from outside any server, such as a management command.
    """
    return {
        "type": "chat.message",
        "name": clean(name, MAX_NAME) or "anonymous",
        "text": clean(text, MAX_TEXT),
        "via": via,
        "worker": worker,
    }


def announce(room: str, text: str, *, name: str, via: str, worker: str | None) -> None:
    """Broadcast into a room from synchronous code (a view, a command, a task queue)."""
    event = chat_event(name=name, text=text, via=via, worker=worker)
    async_to_sync(get_channel_layer().group_send)(group_for(room), event)
