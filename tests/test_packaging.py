"""pyproject.toml lists the wheel's packages by hand (migrations/ is mapped into app): the list
must name every directory of app/ and of migrations/, or the wheel silently lacks it."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def packages_under(directory: Path, name: str) -> set[str]:
    """`name` and a dotted name for every directory below `directory` (caches aside)."""
    found = {name}
    for path in directory.rglob("*"):
        relative = path.relative_to(directory)
        if path.is_dir() and "__pycache__" not in relative.parts:
            found.add(".".join((name, *relative.parts)))
    return found


def test_the_wheel_lists_every_directory_of_app_and_migrations() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"] == {"app._migrations": "migrations"}
    expected = packages_under(ROOT / "app", "app") | packages_under(
        ROOT / "migrations", "app._migrations"
    )
    listed = setuptools["packages"]
    assert len(listed) == len(set(listed))
    assert set(listed) == expected
    assert "script.py.mako" in setuptools["package-data"]["app._migrations"]
