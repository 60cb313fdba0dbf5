"""The docs stay true: the configuration table matches `Settings`, and every relative link in
README.md and docs/*.md leads to a file, and to a heading when it names one."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from urllib.parse import unquote

import pytest

from app.core.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = sorted([ROOT / "README.md", *DOCS.glob("*.md")])
CONFIGURATION = DOCS / "configuration.md"

FENCE = re.compile(r"^(```|~~~)")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target) and ![alt](target); an optional "title" after the target is ignored.
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def prose_lines(text: str) -> list[str]:
    """The lines of a Markdown text outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a page, repeats numbered as GitHub does (`x`, `x-1`, ...)."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    for line in prose_lines(page.read_text()):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> list[str]:
    """Targets of the Markdown links of a page, outside code."""
    targets: list[str] = []
    for line in prose_lines(page.read_text()):
        targets.extend(LINK.findall(CODE_SPAN.sub("", line)))
    return targets


def is_relative(target: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken: list[str] = []
    for target in filter(is_relative, links(page)):
        path, _, anchor = target.partition("#")
        destination = (page.parent / unquote(path)).resolve() if path else page
        if not destination.exists():
            broken.append(f"{target}: no such file")
        elif not destination.is_relative_to(ROOT):
            broken.append(f"{target}: outside the repository")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            broken.append(f"{target}: no heading #{anchor} in {destination.name}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_links_are_found() -> None:
    """The link pattern sees links, titles, images and anchors, and not code."""
    page = '[a](x.md) ![b](y.png) [`c`](z.md#h "t") `[d](code.md)` [e [f]](g.md)'
    assert LINK.findall(CODE_SPAN.sub("", page)) == ["x.md", "y.png", "z.md#h", "g.md"]
    assert slug("A create whose answer was *lost*: `never` sent (again)") == (
        "a-create-whose-answer-was-lost-never-sent-again"
    )
    assert slug("[Link](x.md) and snake_case") == "link-and-snake_case"


def test_every_docs_page_is_reachable_from_the_readme() -> None:
    linked = {
        (ROOT / target.partition("#")[0]).resolve()
        for target in links(ROOT / "README.md")
        if is_relative(target)
    }
    orphans = [page.name for page in DOCS.glob("*.md") if page.resolve() not in linked]
    assert not orphans, f"not linked from README.md: {orphans}"


@pytest.mark.parametrize("page", sorted(DOCS.glob("*.md")), ids=lambda page: page.name)
def test_every_docs_page_says_what_it_is_for(page: Path) -> None:
    """A title, then a first paragraph (one sentence) before anything else."""
    lines = page.read_text().splitlines()
    assert lines[0].startswith("# "), "the page opens with its title"
    assert lines[1] == "", "a blank line after the title"
    first = " ".join(lines[2 : lines.index("", 2)])
    assert first[:1].isupper(), f"the first paragraph starts a sentence: {first!r}"
    assert first.endswith("."), f"the first paragraph is a sentence: {first!r}"


def test_readme_fits_on_a_page_with_its_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    assert "scripts/run-demo" in readme
    assert "scripts/test" in readme


# The configuration table: every Settings field, by its variable, with its default.


def table_rows(page: Path) -> dict[str, str]:
    """Variable -> default, from the `| variable | default | meaning |` table of a page."""
    rows: dict[str, str] = {}
    in_table = False
    for line in prose_lines(page.read_text()):
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        if cells[:2] == ["variable", "default"]:
            in_table = True
            continue
        if not in_table:
            continue
        if not line.startswith("|"):
            break
        if set(cells[0]) <= set("-: "):
            continue
        variable = cells[0].strip("`")
        assert variable not in rows, f"{variable} is in the table twice"
        rows[variable] = cells[1].strip("`")
    return rows


def variable(field: str) -> str:
    return f"{Settings.model_config.get('env_prefix', '')}{field}".upper()


def shown(value: object) -> str:
    """A default as the table writes it: seconds for durations, `none`, `true`/`false`."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, tuple | list):
        return ",".join(shown(item) for item in value)
    return str(value)


def test_the_configuration_table_names_every_setting_and_no_other() -> None:
    documented = set(table_rows(CONFIGURATION))
    settings = {variable(name) for name in Settings.model_fields}
    missing, unknown = sorted(settings - documented), sorted(documented - settings)
    problems = [f"missing from docs/configuration.md: {name}" for name in missing]
    problems += [f"documented but not in Settings: {name}" for name in unknown]
    assert not problems, "; ".join(problems)


def test_the_configuration_table_gives_every_default() -> None:
    rows = table_rows(CONFIGURATION)
    wrong = {
        variable(name): (rows[variable(name)], shown(field.default))
        for name, field in Settings.model_fields.items()
        if variable(name) in rows and rows[variable(name)] != shown(field.default)
    }
    assert not wrong, f"documented vs actual defaults: {wrong}"
