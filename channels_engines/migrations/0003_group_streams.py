"""Bring the PostgreSQL engine's tables to the third layout (default names): group streams.

A group message for members on process-specific channels is stored once, in the group's
stream, and read by every process with members; ``group_stream`` keeps each group's
messages in order, and a member's ``joined`` says from which message on it receives.
Every statement changes only what is missing. ``tests/test_postgres_schema.py`` checks
the SQL matches what the engine runs.
"""

from __future__ import annotations

from django.db import migrations

from ._postgresql import PostgreSQLOnly

UPGRADE = (
    'ALTER TABLE "channels_engines_group_member" ADD COLUMN IF NOT EXISTS joined bigint NOT NULL DEFAULT 0',
    'CREATE UNLOGGED TABLE IF NOT EXISTS "channels_engines_group_stream" ( group_name text PRIMARY KEY, prev bigint NOT NULL, last bigint NOT NULL)',
    'CREATE INDEX IF NOT EXISTS "channels_engines_group_member_shared" ON "channels_engines_group_member" (group_name) WHERE strpos(queue, \'!\') = 0',
)

DOWNGRADE = (
    'DROP INDEX IF EXISTS "channels_engines_group_member_shared"',
    'DROP TABLE IF EXISTS "channels_engines_group_stream"',
    'ALTER TABLE "channels_engines_group_member" DROP COLUMN IF EXISTS joined',
)


class Migration(migrations.Migration):
    dependencies = [("channels_engines", "0002_second_layout")]
    operations = [PostgreSQLOnly(UPGRADE, DOWNGRADE)]
