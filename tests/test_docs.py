"""The documentation as files: the pages read as plain Markdown (the README links them as
files), and the parts generated from the code (docs/generate.py) match the code."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GENERATE = ROOT / "docs" / "generate.py"

# MyST-only syntax, which GitHub and other Markdown viewers show as it is typed.
ROLE = re.compile(r"\{[a-z:-]+\}`")
DIRECTIVE = re.compile(r"^(```|:::)\{", re.MULTILINE)


def _linked_from_readme() -> list[Path]:
    text = (ROOT / "README.md").read_text()
    return sorted({ROOT / link for link in re.findall(r"\]\((docs/[a-z-]+\.md)\)", text)})


def test_readme_links_pages_that_exist() -> None:
    pages = _linked_from_readme()
    assert len(pages) >= 7, pages
    assert [page for page in pages if not page.is_file()] == []


def test_pages_are_plain_markdown() -> None:
    """Every page but the two that only Sphinx needs: index.md (the table of contents) and
    changelog.md (which includes CHANGELOG.md)."""
    pages = sorted((ROOT / "docs").glob("*.md"))
    assert set(_linked_from_readme()) <= set(pages)
    found = {}
    for page in pages:
        if page.name in ("index.md", "changelog.md"):
            continue
        text = page.read_text()
        hits = ROLE.findall(text) + DIRECTIVE.findall(text)
        if hits:
            found[page.name] = hits
    assert found == {}, "MyST roles or directives, shown raw outside Sphinx"


def _generate(docs: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(docs / "generate.py"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_generated_blocks_match_the_code() -> None:
    result = _generate(ROOT / "docs", "--check")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_a_stale_block_is_reported_then_rewritten(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(GENERATE, docs)
    page = docs / "configuration.md"
    original = (ROOT / "docs" / "configuration.md").read_text()
    row = re.search(r"^\| `capacity` .*$", original, re.MULTILINE)
    assert row is not None
    page.write_text(original.replace(row.group(0), "| `capacity` | changed by hand | | |"))

    result = _generate(docs, "--check")
    assert (result.returncode, result.stdout, result.stderr) == (
        1,
        "docs/configuration.md: generated blocks are stale; run python docs/generate.py\n",
        "",
    )
    result = _generate(docs)
    assert (result.returncode, result.stdout) == (0, "updated docs/configuration.md\n")
    assert page.read_text() == original


def test_a_block_that_cannot_be_generated_is_an_error(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(GENERATE, docs)
    page = docs / "page.md"
    text = "# Page\n\n<!-- generated: engine-options -->\n<!-- end generated -->\n"
    page.write_text(text)
    result = _generate(docs)
    assert (result.returncode, result.stdout, result.stderr) == (
        1,
        "",
        "error: page.md:3: cannot generate 'engine-options'\n",
    )
    page.write_text("<!-- generated: layer-options -->\nno end\n")
    result = _generate(docs, "--check")
    assert (result.returncode, result.stderr) == (
        1,
        "error: page.md:1: no '<!-- end generated -->' after '<!-- generated: layer-options -->'\n",
    )
    assert page.read_text() == "<!-- generated: layer-options -->\nno end\n"


def test_the_option_signature_in_writing_an_engine_lists_every_field() -> None:
    """The page shows Option's signature by hand: it must name every field, in order."""
    import dataclasses

    from channels_engines import Option

    text = " ".join((ROOT / "docs" / "writing-an-engine.md").read_text().split())
    shown = re.search(r"`Option\((?P<args>[^)]*)\)`", text)
    assert shown is not None
    names = [arg.split("=")[0].strip() for arg in shown["args"].split(",")]
    assert names == [field.name for field in dataclasses.fields(Option)]
