"""The README is the front door: short, undated, and every link from it, the changelog and the
pages in docs/ leads to a file that exists. Dated history lives in CHANGELOG.md and the
benchmark JSON: docs/ prose carries no dates (code, such as an example run name, may)."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README_MAX_LINES = 220
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [REPO / "README.md", REPO / "CHANGELOG.md", *DOCS]
LINK = re.compile(r"\]\(([^)\s]+)\)")
DATE = re.compile(r"\b20\d\d-\d\d-\d\d\b")
CODE = re.compile(r"```.*?```|`[^`]*`", re.DOTALL)
"""Fenced blocks and inline code spans (which may wrap across lines)."""


def test_the_readme_is_short_and_undated():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES
    assert [line for line in lines if DATE.search(line)] == []


@pytest.mark.parametrize("page", DOCS, ids=lambda page: page.name)
def test_docs_prose_is_undated(page):
    assert DATE.findall(CODE.sub("", page.read_text())) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_local_link_resolves(page):
    targets = [target.split("#")[0] for target in LINK.findall(page.read_text())]
    local = [target for target in targets if target and not re.match(r"[a-z]+:", target)]
    missing = [target for target in local if not (page.parent / target).exists()]
    assert missing == []
