"""Print the SQL of the PostgreSQL engine's tables: ``python -m channels_engines.postgres schema``.

For deployments where the runtime role may not run DDL: a DBA applies the script once
(and the grants for the runtime role), and the layer runs with ``create_tables: False``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .schema import Tables


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m channels_engines.postgres")
    commands = parser.add_subparsers(dest="command", required=True)
    schema = commands.add_parser("schema", help="print the CREATE statements (and GRANTs)")
    schema.add_argument("--schema", default=None, help="schema of the tables (CONFIG 'schema')")
    schema.add_argument("--table-prefix", default="channels_engines_", help="CONFIG 'table_prefix'")
    schema.add_argument(
        "--logged", action="store_true", help="a logged message table (CONFIG 'unlogged': False)"
    )
    schema.add_argument("--grant", metavar="ROLE", help="also print the grants ROLE needs")
    args = parser.parse_args(argv)
    tables = Tables(args.schema, args.table_prefix, unlogged=not args.logged)
    sys.stdout.write(tables.create_script())
    if args.grant:
        sys.stdout.write(tables.grant_script(args.grant))
    return 0


if __name__ == "__main__":
    sys.exit(main())
