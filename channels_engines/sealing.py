"""Authenticated encryption of message bodies, bound to their destination.

Engines that carry messages out of the process (a database, a network) store what the
layer gives them; whoever can read that store must not read or forge messages. The layer
seals every encoded message before the engine sees it and opens it after ``receive()``.

The cipher is AES-256-GCM (``cryptography``'s ``AESGCM``) with a random 96-bit nonce per
message. It was chosen over ChaCha20-Poly1305, which has the same nonce size and the same
guarantees, because servers run AES in hardware: it costs less per message there.
Random 96-bit nonces keep the chance of a repeat below 2**-32 for the first 2**32
messages under one key; rotating keys (see ``encryption_keys``) starts that count again.

Each configured secret (a Django ``SECRET_KEY`` or an ``encryption_keys`` entry) gives a
32-byte key through HKDF-SHA256 with fixed salt and info strings naming this package and
the purpose, so the same secret yields unrelated keys for other purposes
(:meth:`Sealer.subkeys`). The first secret seals; every one opens.

An envelope is::

    version (1) | key id (4) | kind (1: "c" or "g") | [group length (1) | group] | nonce (12)
    | ciphertext and tag (16)

The key id (4 bytes of a hash of the derived key) lets the receiver pick its key without
trying each. The destination label, ``c:<channel>`` or ``g:<group>``, is authenticated as
associated data with the header: a message sealed for one channel does not open on
another. The channel name is not carried, since the receiver knows it; a group name is,
since the receiver of a group message does not know which group it came through.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .redaction import Secret
from .validation import MAX_NAME_LENGTH

__all__ = ["MIN_KEY_LENGTH", "SEAL_OVERHEAD", "Sealer", "Unopenable"]

_VERSION = 1
_KEY_ID_SIZE = 4
_NONCE_SIZE = 12
_TAG_SIZE = 16
_CHANNEL = ord("c")
_GROUP = ord("g")
_SALT = b"channels_engines"
_MESSAGE_PURPOSE = "message sealing"

#: The most bytes sealing adds to a message: a group send with a group name of the
#: longest length. A channel send adds 34 bytes.
SEAL_OVERHEAD = 1 + _KEY_ID_SIZE + 1 + 1 + MAX_NAME_LENGTH + _NONCE_SIZE + _TAG_SIZE

#: Fewest characters an ``encryption_keys`` entry may have.
MIN_KEY_LENGTH = 32


class Unopenable(ValueError):
    """Bytes that do not open as a message sealed for this channel by this layer's keys.

    ``reason`` says why in words that never quote the bytes or a key.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _derive(secret: Secret, purpose: str) -> bytes:
    """The 32-byte key of ``secret`` for ``purpose``."""
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=_SALT,
        info=f"channels_engines {purpose}".encode(),
    ).derive(secret.reveal().encode())


class Sealer:
    """Seals and opens message bodies with an ordered list of secrets: the first seals."""

    __slots__ = ("_ciphers", "_current", "_current_id", "_keys")

    def __init__(self, secrets: Sequence[Secret]) -> None:
        if not secrets:
            raise ValueError("Sealer() needs at least one secret")
        self._keys = tuple(secrets)
        # Key id -> ciphers with that id (two secrets sharing an id: tried in order).
        self._ciphers: dict[bytes, list[AESGCM]] = {}
        for secret in self._keys:
            cipher, key_id = self._cipher(secret)
            self._ciphers.setdefault(key_id, []).append(cipher)
        self._current, self._current_id = self._cipher(self._keys[0])

    @staticmethod
    def _cipher(secret: Secret) -> tuple[AESGCM, bytes]:
        """The cipher of ``secret`` and its key id. The key is derived twice rather than
        kept in a local variable, which an error tracker would record."""
        return (
            AESGCM(_derive(secret, _MESSAGE_PURPOSE)),
            hashlib.sha256(
                b"channels_engines key id\0" + _derive(secret, _MESSAGE_PURPOSE)
            ).digest()[:_KEY_ID_SIZE],
        )

    def __repr__(self) -> str:
        return f"<Sealer AES-256-GCM, {len(getattr(self, '_keys', ()))} keys>"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("a Sealer cannot be pickled: a pickle would hold its keys")

    @property
    def key_count(self) -> int:
        """How many keys open messages (the first also seals)."""
        return len(self._keys)

    def seal_for_channel(self, channel: str, data: bytes) -> bytes:
        """``data`` sealed so that it opens only on ``channel``."""
        header = bytes((_VERSION,)) + self._current_id + bytes((_CHANNEL,))
        return self._seal(header, header + b"c:" + channel.encode(), data)

    def seal_for_group(self, group: str, data: bytes) -> bytes:
        """``data`` sealed for the members of ``group``."""
        name = group.encode()
        header = bytes((_VERSION,)) + self._current_id + bytes((_GROUP, len(name))) + name
        return self._seal(header, header, data)

    def _seal(self, header: bytes, aad: bytes, data: bytes) -> bytes:
        nonce = os.urandom(_NONCE_SIZE)
        return header + nonce + self._current.encrypt(nonce, data, aad)

    @staticmethod
    def for_any_member(sealed: bytes) -> bool:
        """Whether ``sealed`` opens the same for every channel: sealed for a group (a
        message sealed for a channel opens only there)."""
        return len(sealed) > 1 + _KEY_ID_SIZE and sealed[1 + _KEY_ID_SIZE] == _GROUP

    def open(self, channel: str, sealed: bytes) -> bytes:
        """The data sealed in ``sealed`` for ``channel`` or for a group; else raise
        :class:`Unopenable`."""
        start = 1 + _KEY_ID_SIZE + 1
        if len(sealed) < start + _NONCE_SIZE + _TAG_SIZE or sealed[0] != _VERSION:
            raise Unopenable("it is not a sealed message of this version")
        key_id = sealed[1 : 1 + _KEY_ID_SIZE]
        kind = sealed[start - 1]
        if kind == _CHANNEL:
            header = sealed[:start]
            aad = header + b"c:" + channel.encode()
        elif kind == _GROUP:
            end = start + 1 + sealed[start]
            if len(sealed) < end + _NONCE_SIZE + _TAG_SIZE:
                raise Unopenable("it is not a sealed message of this version")
            header = aad = sealed[:end]
            start = end
        else:
            raise Unopenable("it is not a sealed message of this version")
        ciphers = self._ciphers.get(key_id)
        if ciphers is None:
            raise Unopenable("it was sealed with a key this layer does not have")
        nonce = sealed[start : start + _NONCE_SIZE]
        body = sealed[start + _NONCE_SIZE :]
        for cipher in ciphers:
            try:
                return cipher.decrypt(nonce, body, aad)
            except InvalidTag:
                continue
        raise Unopenable(
            "it does not authenticate: forged, corrupted, or sealed for another channel"
        )

    def subkeys(self, purpose: str) -> tuple[bytes, ...]:
        """32-byte keys for another ``purpose``, one per secret, in the same order (the
        first is the current one); unrelated to the keys that seal messages."""
        if not purpose or purpose == _MESSAGE_PURPOSE:
            raise ValueError(f"subkeys(): purpose must be a new non-empty name, not {purpose!r}")
        return tuple(_derive(secret, purpose) for secret in self._keys)
