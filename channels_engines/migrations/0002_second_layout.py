"""Bring the PostgreSQL engine's tables to the second layout (default names).

Adds the sender and sequence-number columns that let receivers drop a second copy of a
retried send, checks that keep rows which would break claims out of the tables, the
ledger of claims from shared queues and the control row (the flush epoch). Every
statement changes only what is missing, so it is safe on tables the layer already
brought up to date itself (``create_tables``). The SQL is written out, as in 0001;
``tests/test_postgres_schema.py`` checks it matches what the engine runs.
"""

from __future__ import annotations

from django.db import migrations

from ._postgresql import PostgreSQLOnly

UPGRADE = (
    'ALTER TABLE "channels_engines_message" ADD COLUMN IF NOT EXISTS sender bigint NOT NULL DEFAULT 0, ADD COLUMN IF NOT EXISTS seq bigint NOT NULL DEFAULT 0',
    'DO $$ BEGIN ALTER TABLE "channels_engines_message" ADD CONSTRAINT "message_channels_valid" CHECK (array_ndims(channels) IS NOT DISTINCT FROM 1 AND array_position(channels, NULL) IS NULL) NOT VALID; EXCEPTION WHEN duplicate_object THEN NULL; END $$',
    'DO $$ BEGIN ALTER TABLE "channels_engines_message" ADD CONSTRAINT "message_expiry_finite" CHECK (isfinite(expires_at)) NOT VALID; EXCEPTION WHEN duplicate_object THEN NULL; END $$',
    'DO $$ BEGIN ALTER TABLE "channels_engines_message" ADD CONSTRAINT "message_payload_size" CHECK (octet_length(payload) <= 268435456) NOT VALID; EXCEPTION WHEN duplicate_object THEN NULL; END $$',
    'DO $$ BEGIN ALTER TABLE "channels_engines_group_member" ADD CONSTRAINT "group_member_capacity_positive" CHECK (capacity > 0) NOT VALID; EXCEPTION WHEN duplicate_object THEN NULL; END $$',
    'DO $$ BEGIN ALTER TABLE "channels_engines_group_member" ADD CONSTRAINT "group_member_expiry_finite" CHECK (isfinite(expires_at)) NOT VALID; EXCEPTION WHEN duplicate_object THEN NULL; END $$',
    'CREATE UNLOGGED TABLE IF NOT EXISTS "channels_engines_claimed" ( queue text NOT NULL, sender bigint NOT NULL, seq bigint NOT NULL, expires_at timestamptz NOT NULL, PRIMARY KEY (queue, sender, seq)) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000)',
    'CREATE TABLE IF NOT EXISTS "channels_engines_control" ( id integer PRIMARY KEY CHECK (id = 1), flush_epoch bigint NOT NULL)',
    'INSERT INTO "channels_engines_control" (id, flush_epoch) VALUES (1, 0) ON CONFLICT DO NOTHING',
)

DOWNGRADE = (
    'DROP TABLE IF EXISTS "channels_engines_control"',
    'DROP TABLE IF EXISTS "channels_engines_claimed"',
    'ALTER TABLE "channels_engines_group_member" DROP CONSTRAINT IF EXISTS "group_member_expiry_finite", DROP CONSTRAINT IF EXISTS "group_member_capacity_positive"',
    'ALTER TABLE "channels_engines_message" DROP CONSTRAINT IF EXISTS "message_payload_size", DROP CONSTRAINT IF EXISTS "message_expiry_finite", DROP CONSTRAINT IF EXISTS "message_channels_valid", DROP COLUMN IF EXISTS seq, DROP COLUMN IF EXISTS sender',
)


class Migration(migrations.Migration):
    dependencies = [("channels_engines", "0001_initial")]
    operations = [PostgreSQLOnly(UPGRADE, DOWNGRADE)]
