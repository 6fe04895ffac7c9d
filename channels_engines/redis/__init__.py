"""The Redis engine (``ENGINE: "redis"``).

Importing this package does not import redis-py; the engine reports a missing ``redis``
extra when it is selected.
"""

from .engine import RedisEngine

__all__ = ["RedisEngine"]
