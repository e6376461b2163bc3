"""Shared by the benchmarks: each writes its tables into one marked section of ``benchmarks/RESULTS.md``."""

from __future__ import annotations

from pathlib import Path


def write_section(path: Path, name: str, text: str) -> None:
    """Replace the section marked ``name`` in the Markdown file ``path`` (or append it); atomic."""
    begin, end = f"<!-- {name}: begin -->", f"<!-- {name}: end -->"
    path = Path(path)
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    section = f"{begin}\n{text}\n{end}"
    if begin in old:
        head, rest = old.split(begin, 1)
        new = head + section + rest.split(end, 1)[1]
    else:
        new = old.rstrip() + "\n\n" + section + "\n"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(new)
    tmp.replace(path)
