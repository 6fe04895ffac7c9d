"""What the migrations share (a module whose name starts with "_" is not a migration)."""

from __future__ import annotations

from typing import Any

from django.db import migrations

__all__ = ["PostgreSQLOnly"]


class PostgreSQLOnly(migrations.RunSQL):
    """RunSQL that applies only to PostgreSQL databases."""

    def database_forwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        if schema_editor.connection.vendor == "postgresql":
            super().database_forwards(app_label, schema_editor, from_state, to_state)

    def database_backwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        if schema_editor.connection.vendor == "postgresql":
            super().database_backwards(app_label, schema_editor, from_state, to_state)
