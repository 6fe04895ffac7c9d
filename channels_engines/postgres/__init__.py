"""The PostgreSQL engine (``ENGINE: "postgres"``).

Importing this package does not import psycopg; the engine reports a missing
``postgres`` extra when it is selected.
"""

from .engine import PostgresEngine

__all__ = ["PostgresEngine"]
