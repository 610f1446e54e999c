"""README's contents at its top: every section is listed, and every link within the page
lands on a heading (the anchors GitHub makes of headings)."""

from __future__ import annotations

import re

from tests.support import ROOT

README = (ROOT / "README.md").read_text()


def headings() -> list[tuple[int, str]]:
    """The page's headings (level, text), outside fenced code blocks."""
    found = []
    fenced = False
    for line in README.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (heading := re.match(r"(#+) (.+)", line)):
            found.append((len(heading[1]), heading[2].strip()))
    return found


def anchor(text: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (not hyphens or
    underscores), each space a hyphen."""
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def test_every_link_within_the_page_lands_on_a_heading():
    anchors = {anchor(text) for _, text in headings()}
    links = re.findall(r"\]\(#([^)]*)\)", README)
    assert links, "the page links to none of its sections"
    assert [link for link in links if link not in anchors] == []


def test_the_contents_list_every_section():
    contents = README.split("\nContents:\n", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"\]\(#([^)]*)\)", contents)
    sections = [anchor(text) for level, text in headings() if level in (2, 3)]
    assert listed == sections
