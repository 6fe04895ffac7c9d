"""Benchmark channels_engines beside its peers and the raw floors, in one invocation.

    python benchmarks/run.py [--quick] [--repeat N] [--dsn DSN] [--redis-url URL]
                             [--only SUBJECT,...] [--scenarios NAME,...]
                             [--markdown OUT.md] [--json OUT.json] [--charts DIR]

Repetitions are interleaved (repetition → scenario → subject) so that drift of the
machine hits every subject alike; the tables show medians. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # make `benchmarks` importable when run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.config import (
    DEFAULT_ADMIN_DSN,
    DEFAULT_DSN,
    DEFAULT_REDIS_URL,
    FULL,
    QUICK,
    Servers,
    Sizes,
)
from benchmarks.session import Session


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line interface."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small workloads, 1 repetition by default (about 4 minutes)",
    )
    parser.add_argument("--repeat", type=int, help="repetitions (default: 1 quick, 3 full)")
    parser.add_argument(
        "--dsn",
        default=DEFAULT_DSN,
        help=f"PostgreSQL DSN the subjects use (default: {DEFAULT_DSN})",
    )
    parser.add_argument(
        "--admin-dsn",
        default=DEFAULT_ADMIN_DSN,
        help=f"superuser DSN for setup and pg_stat_activity (default: {DEFAULT_ADMIN_DSN})",
    )
    parser.add_argument(
        "--redis-url", default=DEFAULT_REDIS_URL, help=f"Redis URL (default: {DEFAULT_REDIS_URL})"
    )
    parser.add_argument("--only", type=_names, help="comma-separated subjects to run")
    parser.add_argument("--scenarios", type=_names, help="comma-separated scenarios to run")
    parser.add_argument("--markdown", help="write the generated Markdown tables here")
    parser.add_argument("--json", help="write every number of the run here")
    parser.add_argument(
        "--charts",
        help="draw one chart per scenario into this folder (<scenario>.png, needs matplotlib);"
        " the Markdown links them",
    )
    return parser.parse_args(argv)


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def main(argv: list[str] | None = None) -> int:
    """Run everything requested; exit 0 even when subjects fail (failures are results)."""
    args = parse_args(argv)
    base: Sizes = QUICK if args.quick else FULL
    sizes = Sizes(**{**base.as_dict(), "repeat": args.repeat or base.repeat})
    servers = Servers(dsn=args.dsn, admin_dsn=args.admin_dsn, redis_url=args.redis_url)
    started = time.monotonic()
    session = Session(servers, sizes, subjects=args.only, scenarios=args.scenarios)
    try:
        session.run()
    finally:
        session.close()
    links: dict[str, str] = {}
    if args.charts:
        relative_to = Path(args.markdown).resolve().parent if args.markdown else Path.cwd()
        for name, path in session.draw_charts(Path(args.charts)).items():
            links[name] = os.path.relpath(path.resolve(), relative_to)
            print(f"chart: {path}", file=sys.stderr)
    markdown = session.markdown(links)
    print(markdown)
    if args.markdown:
        session.write_markdown(args.markdown, markdown)
    if args.json:
        session.write_json(args.json)
    print(f"\ntotal time: {time.monotonic() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
