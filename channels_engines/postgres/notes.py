"""Messages that ride inside their notification, so the receiving process needs no claim.

A message for a process-specific channel is stored as a row and, when it fits, also
copied into the NOTIFY that wakes its process, as a *note*. The process puts the note's
message straight into its mailbox and deletes the row later, in batches, off the
critical path. The row stays the source of truth: a note that is lost (a listener
reconnecting, a full notification queue) or cannot be used at once (a claim of the queue
is running, the mailbox is full) leaves its row to the claim, and the receiving process
drops whichever copy comes second by its sender's sequence number.

Any role that can connect may LISTEN and NOTIFY on any name, so notes are only written
when the layer seals messages (the payload is ciphertext) and are authenticated with a
key derived from the layer's encryption keys: a note that does not verify delivers
nothing and changes nothing. A note carries when it expires, so that it cannot be
replayed once its receiver has forgotten the sender.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["MAX_NOTE", "Notary", "Note"]

logger = logging.getLogger("channels_engines.postgres")

#: Largest NOTIFY payload PostgreSQL accepts is 7,999 bytes; a longer note is not sent
#: (the notification then only wakes the process, which claims the row).
MAX_NOTE = 7999
_VERSION = "m1"


@dataclass(frozen=True)
class Note:
    """A message read from a notification that verified."""

    channel: str
    sender: int
    seq: int
    expires_at: float  # wall-clock seconds
    payload: bytes


class Notary:
    """Writes and checks notes with the layer's notification keys (the first signs)."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ValueError("a Notary needs at least one key")
        self._keys = tuple(keys)

    def __repr__(self) -> str:
        return f"<Notary with {len(getattr(self, '_keys', ()))} key(s)>"

    def write(
        self,
        identifier: str,
        channel: str,
        sender: int,
        seq: int,
        expires_at: float,
        payload: bytes,
    ) -> str:
        """The note for a message, or '' when it would not fit in a notification."""
        # Base64 grows by a third: skip the work for payloads that cannot fit.
        if len(payload) * 4 // 3 + len(channel) + 120 > MAX_NOTE:
            return ""
        expires_ms = int(expires_at * 1000)
        tag = self._tag(self._keys[0], identifier, channel, sender, seq, expires_ms, payload)
        body = base64.b64encode(payload).decode("ascii")
        note = f"{_VERSION}:{sender}:{seq}:{expires_ms}:{channel}:{tag}:{body}"
        return note if len(note) <= MAX_NOTE else ""

    def read(self, identifier: str, text: str) -> Note | None:
        """The note in ``text`` sent to ``identifier``, or None if it is not authentic."""
        parts = text.split(":", 6)
        if len(parts) != 7 or parts[0] != _VERSION:
            return None
        _, sender_text, seq_text, expires_text, channel, tag, body = parts
        try:
            sender, seq, expires_ms = int(sender_text), int(seq_text), int(expires_text)
            payload = base64.b64decode(body, validate=True)
        except (ValueError, binascii.Error):
            return None
        for key in self._keys:
            expected = self._tag(key, identifier, channel, sender, seq, expires_ms, payload)
            if hmac.compare_digest(expected, tag):
                return Note(channel, sender, seq, expires_ms / 1000, payload)
        return None

    @staticmethod
    def _tag(
        key: bytes,
        identifier: str,
        channel: str,
        sender: int,
        seq: int,
        expires_ms: int,
        payload: bytes,
    ) -> str:
        mac = hmac.new(key, digestmod=hashlib.sha256)
        mac.update(f"{_VERSION}|{identifier}|{channel}|{sender}|{seq}|{expires_ms}|".encode())
        mac.update(payload)
        return base64.urlsafe_b64encode(mac.digest()[:24]).decode("ascii")
