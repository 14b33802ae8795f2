"""The Markdown documentation: every relative link resolves to a file (and its #anchor to a heading
there), and the README stays short enough to read."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README_MAX_BYTES = 12_000

_FENCE = re.compile(r"^\s*(```|~~~)")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_CODE_SPAN = re.compile(r"`+[^`]*`+")


def doc_files(root: Path = REPO) -> list[Path]:
    """The tracked Markdown files at the top, in docs/, and the folders' READMEs."""
    files = [root / "README.md", root / "ARCHITECTURE.md", *sorted((root / "docs").glob("*.md"))]
    files += [root / d / "README.md" for d in ("benchmarks", "notebooks", "datasets")]
    return [f for f in files if f.is_file()]


def _prose_lines(text: str):
    """(line number, line) outside fenced code blocks."""
    fenced = False
    for i, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield i, line


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)       # links keep their text
    text = text.replace("`", "").replace("*", "")
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, with GitHub's -1, -2 suffixes for repeats."""
    seen: dict[str, int] = {}
    out = set()
    for _, line in _prose_lines(path.read_text(encoding="utf-8")):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        s = slug(m.group(1))
        n = seen.get(s, 0)
        seen[s] = n + 1
        out.add(s if n == 0 else f"{s}-{n}")
    return out


def broken_links(path: Path, root: Path = REPO) -> list[str]:
    """'file:line: target (why)' for every relative link of *path* that does not resolve."""
    bad = []
    for lineno, line in _prose_lines(path.read_text(encoding="utf-8")):
        for m in _LINK.finditer(_CODE_SPAN.sub("", line)):
            target = m.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):   # http:, https:, mailto:, ...
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(root)}:{lineno}: {target}"
            if not dest.exists():
                bad.append(f"{where} (no such file)")
            elif root.resolve() not in dest.parents and dest != root.resolve():
                bad.append(f"{where} (outside the repository)")
            elif anchor:
                if dest.is_dir() or dest.suffix != ".md":
                    bad.append(f"{where} (anchor into a non-Markdown target)")
                elif anchor not in anchors(dest):
                    bad.append(f"{where} (no heading with this anchor)")
    return bad


def test_the_documents_are_found():
    names = {str(f.relative_to(REPO)) for f in doc_files()}
    assert {"README.md", "ARCHITECTURE.md", "docs/calibration.md", "docs/harness.md", "docs/tensorrt.md",
            "benchmarks/README.md", "notebooks/README.md"} <= names


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(path):
    assert broken_links(path) == []


def test_readme_is_short():
    size = (REPO / "README.md").stat().st_size
    assert size < README_MAX_BYTES, f"README.md is {size} bytes; move detail to docs/ (limit {README_MAX_BYTES})"


def test_moved_sections_are_linked_from_the_readme():
    """A user starting at the README reaches every document that took a part of it."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    linked = {m.group(1).partition("#")[0] for _, ln in _prose_lines(text) for m in _LINK.finditer(ln)}
    assert {"docs/calibration.md", "docs/data.md", "docs/harness.md", "docs/tensorrt.md",
            "benchmarks/README.md", "ARCHITECTURE.md"} <= linked


def test_slugs_follow_github():
    assert slug("`--algorithm auto`") == "--algorithm-auto"
    assert slug("Q/DQ export") == "qdq-export"
    assert slug("Readers (`calib.datasets`)") == "readers-calibdatasets"
    assert slug("What was and was not run here") == "what-was-and-was-not-run-here"


def test_the_check_finds_broken_links(tmp_path):
    """The checker can fail: a missing file, a missing anchor and a bad anchor into another file are
    reported; links in code, external links and good anchors are not."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Title\n\n## Twice\n\n## Twice\n")
    doc = tmp_path / "README.md"
    doc.write_text("# Top\n\n"
                   "[ok](docs/other.md#twice-1) [ok](#top) [web](https://example.com/x.md)\n"
                   "`[not a link](nowhere.md)`\n"
                   "```\n[also not](nowhere.md)\n# not a heading\n```\n"
                   "[gone](docs/missing.md) [bad](docs/other.md#nope) [self](#not-a-heading)\n")
    assert [b.split(": ", 1)[1] for b in broken_links(doc, tmp_path)] == [
        "docs/missing.md (no such file)", "docs/other.md#nope (no heading with this anchor)",
        "#not-a-heading (no heading with this anchor)"]
