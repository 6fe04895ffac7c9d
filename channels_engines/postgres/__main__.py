"""Print the SQL of the PostgreSQL engine's tables: ``python -m channels_engines.postgres schema``.

For deployments where the runtime role may not run DDL: a DBA applies the script once
(and the grants for the runtime role), and the layer runs with ``create_tables: False``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from .options import check_identifier
from .schema import Tables


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m channels_engines.postgres")
    commands = parser.add_subparsers(dest="command", required=True)
    schema = commands.add_parser("schema", help="print the CREATE statements (and GRANTs)")
    schema.add_argument(
        "--schema",
        default=None,
        type=_identifier("schema"),
        help="schema of the tables (CONFIG 'schema')",
    )
    schema.add_argument(
        "--table-prefix",
        default="channels_engines_",
        type=_identifier("table_prefix"),
        help="CONFIG 'table_prefix'",
    )
    schema.add_argument(
        "--logged", action="store_true", help="a logged message table (CONFIG 'unlogged': False)"
    )
    schema.add_argument("--grant", metavar="ROLE", help="also print the grants ROLE needs")
    args = parser.parse_args(argv)
    tables = Tables(args.schema, args.table_prefix, unlogged=not args.logged)
    # One transaction: `psql -f` applies all of it or, after any error, none of it.
    script = tables.create_script() + (tables.grant_script(args.grant) if args.grant else "")
    sys.stdout.write(f"BEGIN;\n{script}COMMIT;\n")
    return 0


def _identifier(key: str) -> Callable[[str], str]:
    """Parse an option with the check CONFIG[key] gets, so the script matches a layer's."""

    def parse(value: str) -> str:
        allowed = check_identifier(value)
        if allowed is not None:
            raise argparse.ArgumentTypeError(
                f"{value!r} is not allowed: use {allowed}, as for CONFIG {key!r}."
            )
        return value

    return parse


if __name__ == "__main__":
    sys.exit(main())
