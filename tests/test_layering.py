"""Dependencies point one way: every import in app/ goes down the table of rooms, never up.

Entry points -> routers (console, API, operations) -> domain rooms (callbacks, archive, notify,
uploads, balance) -> tasks -> workers, provider, storage -> core. A module may import its own room
and any room of a lower layer; rooms of one layer do not import each other. Imports inside
functions count too."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

APP = Path(__file__).resolve().parents[1] / "app"

# (module prefix, room, layer); the longest matching prefix decides. Higher layers depend on
# lower ones only.
ROOMS: tuple[tuple[str, str, int], ...] = (
    ("app.main", "entry", 6),
    ("app.cli", "entry", 6),
    ("app.runtime", "entry", 6),
    ("app.models", "entry", 6),  # every ORM model, for Alembic
    ("app.client", "entry", 6),  # the `generate` command
    ("app.console", "console", 5),
    ("app.operations", "operations", 5),
    ("app.tasks.router", "api", 5),
    ("app.archive.router", "api", 5),
    ("app.uploads.router", "api", 5),
    ("app.references", "api", 5),  # reference images: resolved at create, served under /inputs/
    ("app.balance", "balance", 4),  # the provider's balance: polled by workers, shown by all
    ("app.callbacks", "callbacks", 4),
    ("app.archive", "archive", 4),
    ("app.notify", "notify", 4),
    ("app.uploads", "uploads", 4),
    ("app.tasks", "tasks", 3),
    ("app.workers", "workers", 2),
    ("app.provider", "provider", 2),
    ("app.storage", "storage", 2),
    ("app.core", "core", 1),
)

# Edges that still run the wrong way, each with the reason it is allowed for now.
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {}


@dataclass(frozen=True, slots=True)
class Edge:
    """One import of one app module by another."""

    path: str
    line: int
    importer: str
    imported: str


def module_name(path: Path, app: Path) -> str:
    """`app/tasks/service.py` -> `app.tasks.service`; a package is named by its folder."""
    parts = path.relative_to(app.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_module(name: str, app: Path) -> bool:
    relative = Path(*name.split(".")[1:])
    return (app / relative).with_suffix(".py").is_file() or (app / relative).is_dir()


def imports_of(path: Path, app: Path) -> list[Edge]:
    """Every `app.` module `path` imports, at any depth of its code."""
    importer = module_name(path, app)
    package = importer if path.name == "__init__.py" else importer.rpartition(".")[0]
    shown = str(path.relative_to(app.parent))
    edges: dict[Edge, None] = {}  # in order, each (line, module) once
    for node in ast.walk(ast.parse(path.read_text(), filename=shown)):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                child = f"{base}.{alias.name}"
                targets.append(child if _is_module(child, app) else base)
        else:
            continue
        for target in targets:
            if target == "app" or target.startswith("app."):
                edges[Edge(shown, node.lineno, importer, target)] = None
    return list(edges)


def room_of(module: str) -> tuple[str, int] | None:
    """The room and layer of a module, from the longest matching prefix of ROOMS."""
    best: tuple[str, str, int] | None = None
    for prefix, room, layer in ROOMS:
        if (module == prefix or module.startswith(prefix + ".")) and (
            best is None or len(prefix) > len(best[0])
        ):
            best = (prefix, room, layer)
    return None if best is None else (best[1], best[2])


def back_edges(app: Path = APP) -> list[str]:
    """A message for every import that runs up the table or across one layer."""
    problems: list[str] = []
    for path in sorted(app.rglob("*.py")):
        for edge in imports_of(path, app):
            if edge.imported == "app" or (edge.importer, edge.imported) in KNOWN_EXCEPTIONS:
                continue
            source, target = room_of(edge.importer), room_of(edge.imported)
            if source is None or target is None:
                continue  # test_every_module_has_a_room names it
            (from_room, from_layer), (to_room, to_layer) = source, target
            if from_room == to_room or to_layer < from_layer:
                continue
            direction = "up" if to_layer > from_layer else "across"
            problems.append(
                f"{edge.path}:{edge.line}: {edge.importer} imports {edge.imported}: "
                f"{from_room} (layer {from_layer}) may not depend {direction} on {to_room} "
                f"(layer {to_layer}); move the shared piece down or pass it in at wiring time"
            )
    return problems


def test_every_module_has_a_room() -> None:
    unplaced = [
        module_name(path, APP)
        for path in sorted(APP.rglob("*.py"))
        if module_name(path, APP) != "app" and room_of(module_name(path, APP)) is None
    ]
    assert unplaced == [], f"add these modules' rooms to ROOMS in {__name__}: {unplaced}"


def test_dependencies_point_down() -> None:
    problems = back_edges()
    assert problems == [], "imports that run the wrong way:\n" + "\n".join(problems)


def test_known_exceptions_are_still_needed() -> None:
    edges = {
        (edge.importer, edge.imported)
        for path in APP.rglob("*.py")
        for edge in imports_of(path, APP)
    }
    stale = sorted(set(KNOWN_EXCEPTIONS) - edges)
    assert stale == [], f"remove these from KNOWN_EXCEPTIONS, nothing imports so any more: {stale}"


def test_an_import_inside_a_function_counts(tmp_path: Path) -> None:
    app = tmp_path / "app"
    (app / "core").mkdir(parents=True)
    (app / "tasks").mkdir()
    (app / "core" / "config.py").write_text("def f():\n    from app.tasks import models\n")
    (app / "tasks" / "models.py").write_text("")

    [problem] = back_edges(app)

    assert problem.startswith("app/core/config.py:2: app.core.config imports app.tasks.models:")
    assert "core (layer 1) may not depend up on tasks (layer 3)" in problem


def test_siblings_of_one_layer_do_not_import_each_other(tmp_path: Path) -> None:
    app = tmp_path / "app"
    (app / "notify").mkdir(parents=True)
    (app / "archive").mkdir()
    (app / "notify" / "notifying.py").write_text("from app.archive import repository\n")
    (app / "archive" / "repository.py").write_text("")

    [problem] = back_edges(app)

    assert "notify (layer 4) may not depend across on archive (layer 4)" in problem
