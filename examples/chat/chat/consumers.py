"""The WebSocket side of a room: one consumer per open page."""

from __future__ import annotations

import json
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer

from .rooms import chat_event, group_for, worker_label


class RoomConsumer(AsyncWebsocketConsumer):
    """Joins the room's group while the socket is open; relays what members say.

    The group membership lives in the channel layer (a PostgreSQL table), so a message
    said to a page connected to one server process reaches pages connected to any other.
    """

    group: str | None = None

    async def connect(self) -> None:
        self.room = self.scope["url_route"]["kwargs"]["room"]
        self.group = group_for(self.room)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self._send_json({"type": "welcome", "room": self.room, "worker": worker_label()})

    async def disconnect(self, code: int) -> None:
        # Leave now: otherwise the membership outlives the socket until the layer
        # expires it, and every message to the room is written for a reader that is gone.
        if self.group is not None:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        try:
            data = json.loads(text_data or "")
        except ValueError:
            return
        if not isinstance(data, dict):
            return
        event = chat_event(
            name=data.get("name", ""),
            text=data.get("text", ""),
            via="websocket",
            worker=worker_label(),
        )
        if event["text"] and self.group is not None:
            await self.channel_layer.group_send(self.group, event)

    async def chat_message(self, event: dict[str, Any]) -> None:
        """A group message of type ``chat.message``: show it in the page."""
        await self._send_json(
            {key: event[key] for key in ("name", "text", "via", "worker")} | {"type": "chat"}
        )

    async def _send_json(self, data: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(data))
