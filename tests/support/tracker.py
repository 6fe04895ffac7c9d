"""What an error tracker records of an exception or a log record: a model of Sentry's SDK.

With its defaults (``include_local_variables=True``), Sentry's Python SDK records, for an
exception and each exception of its ``__cause__``/``__context__`` chain, the type, the
``str()`` and the local variables of every frame of the traceback
(``sentry_sdk.utils.serialize_frame``). Values are serialized recursively
(``sentry_sdk.serializer``): mappings, and lists, tuples, sets and frozensets are walked;
strings and bytes are recorded as they are (by value: a ``str`` subclass shows its
characters, whatever its ``__repr__``), except in frame variables, where strings too go
through ``repr()``; everything else is recorded by ``repr()``. Its logging integration
records a record's message, its ``msg`` and ``args`` (by value) and its extra attributes.
The default scrubber replaces only top-level variables and keys named like ``password``
or ``token``; nested values and other names stay.

This model is stricter: strings are recorded by value and by repr everywhere; any
``Mapping``, ``Sequence`` or ``Set`` is walked, with no depth or breadth limit; both
``__cause__`` and ``__context__`` are followed, even a suppressed context; an exception's
``args`` are walked; objects of this package are walked through their attributes too
(except the ``opaque`` ones: their ``repr()`` is recorded, which is all a tracker sees).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

TESTS = str(Path(__file__).resolve().parents[1])

#: LogRecord attributes that every record has; the others are a call's ``extra``.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


@dataclass
class Recorded:
    """Every text a tracker would record, each with where it was found."""

    opaque: tuple[type, ...] = ()
    texts: list[tuple[str, str]] = field(default_factory=list)
    _seen: set[int] = field(default_factory=set)
    _kept: list[object] = field(default_factory=list)  # keeps ids unique while walking

    def leaks(self, secret: str) -> list[str]:
        """Where ``secret`` was recorded."""
        return sorted({where for where, text in self.texts if secret in text})

    # Exceptions ---------------------------------------------------------------------

    def exception(self, error: BaseException, where: str = "") -> None:
        """``error``, its chain, and the locals of every frame (but the tests' own)."""
        stack: list[BaseException | None] = [error]
        while stack:
            item = stack.pop()
            if item is None or self._visited(item):
                continue
            name = f"{where}{type(item).__name__}"
            self._text(f"{name} str()", _safe(str, item))
            self._text(f"{name} repr()", _safe(repr, item))
            self.value(item.args, f"{name}.args")
            self.value(getattr(item, "__notes__", ()), f"{name}.__notes__")
            traceback = item.__traceback__
            while traceback is not None:
                self.frame(traceback.tb_frame, name)
                traceback = traceback.tb_next
            stack += [item.__cause__, item.__context__]
            stack += list(getattr(item, "exceptions", ()))

    def frame(self, frame: FrameType, where: str) -> None:
        code = frame.f_code
        if code.co_filename.startswith(TESTS):
            return  # the test's own variables hold the planted secret
        place = f"{where}: {_short(code.co_filename)} {code.co_name}()"
        for name, value in frame.f_locals.items():
            self.value(value, f"{place} {name}")

    # Log records --------------------------------------------------------------------

    def log_record(self, record: logging.LogRecord) -> None:
        where = f"log {record.name} {record.levelname}"
        self._text(f"{where} message", _safe(record.getMessage))
        self.value(record.msg, f"{where} msg")
        self.value(record.args, f"{where} args")
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES:
                self.value(value, f"{where} extra {key}")
        if record.exc_info and record.exc_info[1] is not None:
            self.exception(record.exc_info[1], f"{where} exc_info ")

    # Values -------------------------------------------------------------------------

    def value(self, value: Any, where: str) -> None:
        if isinstance(value, (str, bytes, bytearray, memoryview)):
            self._text(where, _plain_text(value))
            self._text(where, _safe(repr, value))
            return
        if value is None or isinstance(value, (bool, int, float)):
            return
        if self._visited(value):
            return
        self._text(where, _safe(repr, value))
        if isinstance(value, Mapping):
            for key, item in list(value.items()):
                self.value(key, f"{where}[key]")
                self.value(item, f"{where}[{key!r}]")
        elif isinstance(value, (Sequence, Set)):
            for index, item in enumerate(list(value)):
                self.value(item, f"{where}[{index}]")
        elif isinstance(value, BaseException):
            self.value(value.args, f"{where}.args")
        elif _ours(value) and not isinstance(value, self.opaque):
            for name, item in _attributes(value):
                self.value(item, f"{where}.{name}")

    # Internals ----------------------------------------------------------------------

    def _visited(self, value: object) -> bool:
        if id(value) in self._seen:
            return True
        self._seen.add(id(value))
        self._kept.append(value)
        return False

    def _text(self, where: str, text: str) -> None:
        self.texts.append((where, text))


def _ours(value: object) -> bool:
    return type(value).__module__.split(".", 1)[0] == "channels_engines"


def _attributes(value: object) -> Iterable[tuple[str, Any]]:
    """Instance attributes, from ``__dict__`` and from ``__slots__`` of every class."""
    found: dict[str, Any] = dict(getattr(value, "__dict__", {}))
    for cls in type(value).__mro__:
        slots = cls.__dict__.get("__slots__", ())
        for slot in (slots,) if isinstance(slots, str) else slots:
            if slot not in ("__dict__", "__weakref__") and hasattr(value, slot):
                found.setdefault(slot, getattr(value, slot))
    return found.items()


def _plain_text(value: str | bytes | bytearray | memoryview) -> str:
    if isinstance(value, str):
        return str.__str__(value)  # the characters, whatever a subclass' __str__ says
    return bytes(value).decode("utf-8", "replace")


def _safe(function: Any, *args: Any) -> str:
    try:
        return str(function(*args))
    except Exception:
        return "<broken repr>"


def _short(filename: str) -> str:
    for marker in ("site-packages/", "channels_engines/"):
        if marker in filename:
            return marker.rstrip("/") + "/" + filename.rsplit(marker, 1)[1]
    return filename


def record(*errors: BaseException, opaque: tuple[type, ...] = ()) -> Recorded:
    found = Recorded(opaque)
    for error in errors:
        found.exception(error)
    return found


class Records(logging.Handler):
    """Every log record of every logger, at every level, while in use."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> Records:
        root = logging.getLogger()
        self._levels = {name: logging.getLogger(name).level for name in _NOISY}
        self._root_level = root.level
        root.addHandler(self)
        root.setLevel(logging.DEBUG)
        for name in _NOISY:
            logging.getLogger(name).setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc: object) -> None:
        root = logging.getLogger()
        root.removeHandler(self)
        root.setLevel(self._root_level)
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)


#: Loggers that may have a level of their own; they are opened to DEBUG too.
_NOISY = ("channels_engines", "psycopg", "asyncio", "hvac", "urllib3", "botocore")
