"""Write the generated parts of the documentation into the pages, as plain Markdown.

The pages are read in two places: built by Sphinx, and as files (on GitHub, in an editor).
So what is generated from the code is written into the pages themselves, where both
show it, between two comment lines that neither shows::

    <!-- generated: engine-options postgres -->
    ...
    <!-- end generated -->

``python docs/generate.py`` rewrites every such block; ``--check`` lists the stale ones
(tests/test_docs.py fails on them). What a block holds, by its first word:

``layer-options``
    the CONFIG keys of every engine (``channels_engines.layer_options.LAYER_OPTIONS``);
``engine-options NAME``
    the CONFIG keys of the engine that ``ENGINE: NAME`` selects;
``credential-provider-options NAME``
    the options of a credential provider;
``code PATH [pyobject=NAME] [start-at=TEXT] [end-at=TEXT] [end-before=TEXT] [dedent]``
    lines of a source file (PATH relative to the page), as a fenced code block;
``include PATH``
    a Markdown file, as it is (the benchmark run).

Each option table shows the key, what ``Option.describe()`` says is allowed, the default
and the help text: the declarations the layer validates against, so the pages cannot
drift from them unnoticed.
"""

from __future__ import annotations

import argparse
import ast
import re
import shlex
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
# The checkout's code, installed or not, and the example engine package, from its source.
sys.path[:0] = [str(ROOT), str(ROOT / "examples" / "thirdparty_engine")]

BEGIN = re.compile(r"^<!-- generated: (?P<spec>.+) -->$")
END = "<!-- end generated -->"
HEADERS = ("Key", "Allowed values", "Default", "Meaning")
LANGUAGES = {".py": "python", ".toml": "toml"}


class GenerateError(Exception):
    """A block that cannot be generated; the message names the page and line."""


def pages() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def update(page: Path) -> str:
    """The page's text with every generated block rewritten."""
    lines = page.read_text().splitlines(keepends=True)
    out: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        out.append(line)
        match = BEGIN.match(line.rstrip("\n"))
        index += 1
        if match is None:
            continue
        where = f"{page.name}:{index}"
        end = next((i for i in range(index, len(lines)) if lines[i].rstrip("\n") == END), None)
        if end is None:
            raise GenerateError(f"{where}: no {END!r} after {line.strip()!r}")
        try:
            body = render(match["spec"], page)
        except GenerateError as exc:
            raise GenerateError(f"{where}: {exc}") from None
        out.append(f"\n{body.rstrip()}\n\n")
        index = end
    return "".join(out)


def stale() -> list[str]:
    """The pages whose generated blocks differ from what the code generates now."""
    return [page.name for page in pages() if update(page) != page.read_text()]


def render(spec: str, page: Path) -> str:
    kind, *args = shlex.split(spec)
    if kind == "layer-options" and not args:
        from channels_engines.layer_options import LAYER_OPTIONS

        return options_table(LAYER_OPTIONS)
    if kind == "engine-options" and len(args) == 1:
        from channels_engines.engine_registry import engines

        engine = engines.load(args[0], where="docs")
        if not engine.options:
            return f"The {args[0]} engine has no CONFIG keys of its own."
        return options_table(engine.options)
    if kind == "credential-provider-options" and len(args) == 1:
        from channels_engines.credentials import credential_providers

        provider = credential_providers.load(args[0], where="docs")
        if not provider.options:
            return f"The {args[0]} provider takes no options."
        return options_table(provider.options)
    if kind == "code" and args:
        return code_block(page.parent / args[0], dict(_option(arg) for arg in args[1:]))
    if kind == "include" and len(args) == 1:
        return (page.parent / args[0]).read_text()
    raise GenerateError(f"cannot generate {spec!r}")


def options_table(options: Mapping[str, Any]) -> str:
    rows = [HEADERS, ("---",) * len(HEADERS)]
    for key, option in options.items():
        rows.append(
            (_code(key), _cell(option.describe()), _code(_default(option)), _cell(option.help))
        )
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def code_block(path: Path, options: Mapping[str, str]) -> str:
    """Lines of ``path`` chosen like Sphinx's literalinclude options of the same names."""
    unknown = set(options) - {"pyobject", "start-at", "end-at", "end-before", "dedent"}
    if unknown:
        raise GenerateError(f"unknown code options {sorted(unknown)}")
    lines = path.read_text().splitlines()
    start, stop = 0, len(lines)
    if "pyobject" in options:
        start, stop = _pyobject(path, lines, options["pyobject"])
    if "start-at" in options:
        start = _find(lines, options["start-at"], start, stop, path)
    if "end-at" in options:
        stop = _find(lines, options["end-at"], start, stop, path) + 1
    if "end-before" in options:
        stop = _find(lines, options["end-before"], start, stop, path)
    text = "\n".join(lines[start:stop]).strip("\n")
    if "dedent" in options:
        text = textwrap.dedent(text)
    fence = "`" * max(3, _longest_run(text, "`") + 1)
    return f"{fence}{LANGUAGES.get(path.suffix, '')}\n{text}\n{fence}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only list the stale pages")
    args = parser.parse_args(argv)
    try:
        if args.check:
            names = stale()
            for name in names:
                print(f"docs/{name}: generated blocks are stale; run python docs/generate.py")
            return 1 if names else 0
        for page in pages():
            text = update(page)
            if text != page.read_text():
                page.write_text(text)
                print(f"updated docs/{page.name}")
    except GenerateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ImportError as exc:
        print(
            f"error: {exc}. Run this script with the Python of an environment that has the "
            "project's dependencies, e.g. .nox/docs/bin/python docs/generate.py after "
            "`python3 noxfile.py -s docs`.",
            file=sys.stderr,
        )
        return 1
    return 0


def _option(arg: str) -> tuple[str, str]:
    name, _, value = arg.partition("=")
    return name, value


def _pyobject(path: Path, lines: list[str], dotted: str) -> tuple[int, int]:
    """The lines (0-based, end excluded) of a class or function, decorators included."""
    body: list[ast.stmt] = ast.parse("\n".join(lines), str(path)).body
    node: ast.stmt | None = None
    for name in dotted.split("."):
        node = next(
            (
                child
                for child in body
                if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                and child.name == name
            ),
            None,
        )
        if node is None:
            raise GenerateError(f"{path.name} has no {dotted}")
        body = getattr(node, "body", [])
    assert node is not None
    assert node.end_lineno is not None
    decorators = getattr(node, "decorator_list", [])
    first = min([node.lineno, *(d.lineno for d in decorators)])
    return first - 1, node.end_lineno


def _find(lines: list[str], text: str, start: int, stop: int, path: Path) -> int:
    for index in range(start, stop):
        if text in lines[index]:
            return index
    raise GenerateError(f"{path.name} has no line with {text!r} there")


def _default(option: Any) -> str:
    if getattr(option, "required", False):
        return "(required)"
    if option.secret and option.default is not None:
        return "(hidden)"
    return repr(option.default)


def _cell(text: str) -> str:
    """Plain text for a table cell: one line, with what Markdown would read as markup
    (a cell border, emphasis, code, HTML) escaped."""
    return re.sub(r"([\\|*`<])", r"\\\1", " ".join(text.split()))


def _code(text: str) -> str:
    """Inline code for a table cell, whatever backticks ``text`` holds."""
    text = " ".join(text.split())
    ticks = "`" * (_longest_run(text, "`") + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    # Inside code only '|' needs escaping, and only because the table would split there.
    escaped = text.replace("|", "\\|")
    return f"{ticks}{pad}{escaped}{pad}{ticks}"


def _longest_run(text: str, char: str) -> int:
    runs = re.findall(f"{re.escape(char)}+", text)
    return max((len(run) for run in runs), default=0)


if __name__ == "__main__":
    sys.exit(main())
