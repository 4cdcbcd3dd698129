"""The documentation stays true to the tree: the configuration page is generated from the option
tables and current, every relative link (and anchor) resolves, and the README stays short."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.broker_sync import OPTIONS as BROKER_SYNC_OPTIONS
from gateway.database_logins import DATABASE_LOGINS_OPTION
from gateway.settings import OPTIONS as GATEWAY_OPTIONS
from http_api.settings import OPTIONS as API_OPTIONS
from scripts import config_doc
from tests.services import PROJECT

README = PROJECT / "README.md"
PAGES = [README, PROJECT / "bench" / "README.md", *sorted((PROJECT / "docs").glob("*.md"))]
README_MAX_LINES = 200

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def _prose(text: str) -> str:
    """The text without code blocks and code spans, where brackets are not links."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def anchors(text: str) -> set[str]:
    """The anchors GitHub makes of a page's headings: lower case, punctuation dropped, spaces
    as hyphens, a repeated one numbered."""
    found: set[str] = set()
    for heading in _HEADING.findall(_FENCE.sub("", text)):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        candidate, n = slug, 0
        while candidate in found:
            n += 1
            candidate = f"{slug}-{n}"
        found.add(candidate)
    return found


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in _LINK.findall(_prose(page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not ours to check
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved.read_text()):
            broken.append(f"{target}: no heading with that anchor")
    return broken


def test_configuration_doc_is_current() -> None:
    written = config_doc.TARGET.read_text() if config_doc.TARGET.exists() else ""
    assert written == config_doc.render(), (
        f"docs/configuration.md is not current: run {config_doc.COMMAND}"
    )


def test_configuration_doc_names_every_setting() -> None:
    text = config_doc.render()
    options = [*GATEWAY_OPTIONS, DATABASE_LOGINS_OPTION, *API_OPTIONS, *BROKER_SYNC_OPTIONS]
    assert [o.env for o in options if f"| `{o.env}` |" not in text] == []


def test_every_relative_link_resolves() -> None:
    broken = {
        str(page.relative_to(PROJECT)): links for page in PAGES if (links := broken_links(page))
    }
    assert broken == {}


def test_the_link_check_sees_a_broken_link(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## A section, with `code`\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n[ok](other.md) [ok](other.md#a-section-with-code) [ok](#page)\n"
        "[gone](missing.md) [no anchor](other.md#nowhere) [web](https://example.com/x)\n"
        "`[not a link](nowhere.md)`\n```\n[nor this](nowhere.md)\n```\n"
    )
    assert broken_links(page) == [
        "missing.md: no such file",
        "other.md#nowhere: no heading with that anchor",
    ]


def test_readme_stays_short() -> None:
    lines = len(README.read_text().splitlines())
    assert lines < README_MAX_LINES, (
        f"README.md has {lines} lines; keep it under {README_MAX_LINES} and move reference "
        "material to docs/"
    )
