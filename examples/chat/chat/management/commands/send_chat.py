"""``manage.py send_chat ROOM TEXT``: say something in a room from outside any server."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from chat import rooms


class Command(BaseCommand):
    help = "Send a chat message to everyone in a room, whichever server they are connected to."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("room", help="room name, e.g. lobby")
        parser.add_argument("text", help="the message")
        parser.add_argument("--name", default="manage.py", help="sender name shown in the room")

    def handle(self, *args: Any, room: str, text: str, name: str, **options: Any) -> None:
        if not rooms.is_room(room):
            raise CommandError(f"{room!r} is not a room name: use 1 to 50 letters, digits, - or _")
        if not rooms.clean(text, rooms.MAX_TEXT):
            raise CommandError("the message is empty")
        # A new event loop for this one call; the layer closes its connections with it.
        # This process is no server worker: the page says "via command" and nothing more.
        rooms.announce(room, text, name=name, via="command", worker=None)
        self.stdout.write(f"Sent to room {room!r}.")
