"""Messages that ride in the pub/sub message announcing them, so their process needs no read.

A message for a process-specific channel is stored as a stream entry and, when it is
small enough, also carried by the PUBLISH that tells its process, as a *note*. The
process puts it straight into its mailbox and deletes the entry later, in batches. The
entry stays the source of truth: a note lost while the process reconnects, or one it
cannot take at once (a read of the stream is running, the mailbox is full), leaves its
entry to the next read, and the process takes each entry id once.

A client allowed to PUBLISH on the layer's channels could write anything there, so notes
are only written when the layer seals messages, and are authenticated with a key derived
from the layer's encryption keys, bound to the pub/sub channel: a note that does not
verify delivers nothing (the process reads the stream instead). The entry id that the
server adds to a note is not covered; entries are deleted only when the id names an
entry of the same sender and sequence number (see :data:`.keys.FORGET`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["MAX_NOTE", "Announcement", "Notary", "Note", "parse"]

#: Messages larger than this (bytes) are announced without their body: sending a big
#: message twice costs the server more than the read it saves.
MAX_NOTE = 64 * 1024
_VERSION = b"n1"


@dataclass(frozen=True)
class Note:
    """A message read from a note that verified."""

    locals: tuple[str, ...]
    sender: int
    seq: int
    expires_ms: int
    payload: bytes


@dataclass(frozen=True)
class Announcement:
    """What a process hears of a new entry: its id, the id of the entry before it in the
    stream when it was added, and the note (bytes, unverified), empty when the message
    did not ride along.

    With ``previous`` a process knows whether it took everything before the entry: pub/sub
    can skip announcements without closing the connection (a cluster node that has just
    failed over), and an entry taken from its note past one never announced would move
    the cursor over it."""

    entry_id: str
    previous: str
    note: bytes


def parse(data: bytes) -> list[Announcement] | None:
    """The announcements in a pub/sub message, in order, or None if it is not made of
    them: each is "<id>|<previous>|<length of note>|<note>"."""
    found: list[Announcement] = []
    at, size = 0, len(data)
    while at < size:
        head_end = at
        for _ in range(3):
            head_end = data.find(b"|", head_end) + 1
            if head_end == 0:
                return None
        try:
            entry_id, previous, length = data[at : head_end - 1].decode("ascii").split("|")
            note_size = int(length)
        except (UnicodeDecodeError, ValueError):
            return None
        if not (_is_entry_id(entry_id) and _is_entry_id(previous) and length.isdigit()):
            return None
        at = head_end + note_size
        if at > size:
            return None
        found.append(Announcement(entry_id, previous, data[head_end:at]))
    return found or None


class Notary:
    """Writes and checks notes with the layer's notification keys (the first signs)."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ValueError("a Notary needs at least one key")
        self._keys = tuple(keys)

    def __repr__(self) -> str:
        return f"<Notary with {len(getattr(self, '_keys', ()))} key(s)>"

    def write(
        self, channel: str, locals_: str, sender: int, seq: int, expires_ms: int, payload: bytes
    ) -> bytes:
        """The note for a message published on ``channel``, or b'' when it is too big."""
        if len(payload) > MAX_NOTE:
            return b""
        head = f"{sender}|{seq}|{expires_ms}|{locals_}".encode()
        tag = self._tag(self._keys[0], channel, head, payload)
        return b"|".join((_VERSION, head, tag, payload))

    def read(self, channel: str, note: bytes) -> Note | None:
        """The note published on ``channel``, or None if it is not authentic."""
        parts = note.split(b"|", 6)
        if len(parts) != 7 or parts[0] != _VERSION:
            return None
        _, sender, seq, expires, locals_, tag, payload = parts
        head = b"|".join((sender, seq, expires, locals_))
        for key in self._keys:
            if hmac.compare_digest(self._tag(key, channel, head, payload), tag):
                try:
                    names = tuple(locals_.decode().split(","))
                    return Note(names, int(sender), int(seq), int(expires), payload)
                except (UnicodeDecodeError, ValueError):
                    return None
        return None

    @staticmethod
    def _tag(key: bytes, channel: str, head: bytes, payload: bytes) -> bytes:
        mac = hmac.new(key, digestmod=hashlib.sha256)
        mac.update(_VERSION + b"|" + channel.encode() + b"|" + head + b"|")
        mac.update(payload)
        return base64.urlsafe_b64encode(mac.digest()[:24])


def _is_entry_id(text: str) -> bool:
    ms, dash, seq = text.partition("-")
    return bool(dash) and ms.isdigit() and seq.isdigit()


def entry_key(entry_id: str) -> tuple[int, int]:
    """A stream entry id as a sortable pair."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)
