"""Plain synchronous Django views: the pages, and a broadcast into a room over HTTP."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from . import rooms


@require_GET
def index(request: HttpRequest) -> HttpResponse:
    """Pick a room; ``?room=name`` goes straight to it."""
    room = request.GET.get("room", "").strip()
    if room and rooms.is_room(room):
        return redirect("room", room=room)
    error = "Use 1 to 50 letters, digits, '-' or '_'." if room else ""
    context = {"worker": rooms.worker_label(), "error": error, "suggested": ["lobby", "ops"]}
    return render(request, "chat/index.html", context)


@require_GET
def room(request: HttpRequest, room: str) -> HttpResponse:
    """The chat page; its script opens the room's WebSocket on this same server."""
    context = {"room": room, "worker": rooms.worker_label(), "max_text": rooms.MAX_TEXT}
    return render(request, "chat/room.html", context)


@require_POST
def announce(request: HttpRequest, room: str) -> JsonResponse:
    """Broadcast ``text`` to everyone in the room, from ordinary synchronous code.

    Runs in a worker thread under ASGI; ``async_to_sync`` hands the send to the server's
    event loop, so this is what any view, signal handler or form would do.
    """
    text = rooms.clean(request.POST.get("text", ""), rooms.MAX_TEXT)
    if not text:
        return JsonResponse({"error": "text is empty"}, status=400)
    name = request.POST.get("name", "") or "announcement"
    worker = rooms.worker_label()
    rooms.announce(room, text, name=name, via="view", worker=worker)
    return JsonResponse({"sent": True, "worker": worker})
