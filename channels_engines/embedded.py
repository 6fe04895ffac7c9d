"""A private PostgreSQL server for development, tests and the demo.

It lives in :mod:`channels_engines.postgres.embedded`; this module keeps the documented
``channels_engines.embedded`` import path and ``python -m channels_engines.embedded``.
"""

from __future__ import annotations

import sys

from .postgres.embedded import EmbeddedPostgres, main

__all__ = ["EmbeddedPostgres", "main"]

if __name__ == "__main__":
    sys.exit(main())
