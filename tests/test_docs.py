"""The README stays short and points into docs/; the pages themselves are built with
`mkdocs build --strict` by `make test`, which fails on a link or anchor between pages that does not
resolve."""
import re

import yaml

from conftest import REPO

README = (REPO / "README.md").read_text()


def _anchors(markdown: str) -> set[str]:
    """MkDocs' (Python-Markdown's toc) ids for a page's headings."""
    anchors = set()
    for heading in re.findall(r"^#{1,6} (.+)$", markdown, flags=re.M):
        text = re.sub(r"[^\w\s-]", "", heading.replace("`", "")).strip().lower()
        anchors.add(re.sub(r"[-\s]+", "-", text))
    return anchors


def test_the_readme_is_short_and_gives_the_two_commands():
    assert len(README.splitlines()) <= 150
    assert "make run" in README and "make test" in README


def test_every_docs_link_in_the_readme_resolves_to_a_page_and_heading():
    links = re.findall(r"\]\((docs/[^)#]+)(?:#([^)]+))?\)", README)
    assert links, "the README points into docs/"
    for page, anchor in links:
        assert (REPO / page).is_file(), page
        assert not anchor or anchor in _anchors((REPO / page).read_text()), f"{page}#{anchor}"


def test_every_page_in_docs_is_in_the_site_navigation():
    config = yaml.safe_load((REPO / "infra/mkdocs.yml").read_text())
    in_nav = {next(iter(entry.values())) for entry in config["nav"]}
    assert in_nav == {p.name for p in (REPO / "docs").glob("*.md")}
