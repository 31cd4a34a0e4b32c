"""Every problem type the API can answer is listed in docs/api.md with its status."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RAISED = re.compile(r'Problem\(\s*(\d+),\s*"([a-z-]+)"')
MAPPED = re.compile(r'(\d+): "([a-z-]+)"')


def _in_code() -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for path in (ROOT / "src" / "onhand").rglob("*.py"):
        text = path.read_text()
        found |= {(slug, status) for status, slug in RAISED.findall(text)}
        if path.name == "app.py":  # Starlette's HTTP errors: status -> slug, else http-error
            found |= {(slug, status) for status, slug in MAPPED.findall(text)}
    return found


def _in_docs() -> dict[str, str]:
    table: dict[str, str] = {}
    for line in (ROOT / "docs" / "api.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            for slug in re.findall(r"`([a-z-]+)`", cells[0]):
                table[slug] = cells[1]
    return table


def test_every_problem_type_raised_in_the_code_is_documented_with_its_status() -> None:
    code, docs = _in_code(), _in_docs()
    assert len(code) > 20, "the scan found too few problem types to be looking at the code"
    missing = sorted(f"{slug} ({status})" for slug, status in code if docs.get(slug) != status)
    assert not missing, f"docs/api.md lacks or mis-states: {missing}"
