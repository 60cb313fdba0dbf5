"""The container image's recipe: hadolint-clean, locked dependencies, non-root, health check,
migrations shipped inside the wheel; the lock files pin every runtime dependency
(scripts/lock_requirements.py)."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path
from types import ModuleType

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from tests.deploy.tooling import ROOT, run, tool

DOCKERFILE = ROOT / "Dockerfile"


def stages(text: str) -> list[list[str]]:
    """Dockerfile instructions (continuations joined, comments dropped), split by FROM."""
    joined = re.sub(r"\\\n", " ", text)
    instructions = [
        line.strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")
    ]
    result: list[list[str]] = []
    for instruction in instructions:
        if instruction.upper().startswith("FROM "):
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def parse_lock(path: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, sha256 hashes) of a `pip --require-hashes` requirements file."""
    entries: dict[str, tuple[str, list[str]]] = {}
    text = re.sub(r"\\\n", " ", path.read_text())
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement, *options = line.split()
        name, sep, version = requirement.partition("==")
        assert sep, f"{path.name}: {requirement} is not pinned with =="
        assert version, f"{path.name}: {requirement} is not pinned with =="
        hashes = [o.removeprefix("--hash=sha256:") for o in options if o.startswith("--hash=")]
        assert hashes, f"{path.name}: {requirement} has no hash"
        assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), requirement
        key = canonicalize_name(name)
        assert key not in entries, f"{path.name}: {name} twice"
        entries[key] = (version, hashes)
    return entries


def lock_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "lock_requirements", ROOT / "scripts" / "lock_requirements.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hadolint_is_clean() -> None:
    result = run(tool("hadolint"), "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\n")
    result = run(tool("hadolint"), str(bad))
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # :latest


def test_dockerfile_is_multi_stage_locked_and_non_root() -> None:
    build, final = stages(DOCKERFILE.read_text())[-2:]
    assert build[0].split()[-1].lower() == "build"  # FROM ... AS build
    build_text = "\n".join(build)
    assert "--require-hashes" in build_text
    assert "-r requirements.lock" in build_text
    assert "--only-binary=:all:" in build_text
    final_text = "\n".join(final)
    for compiler in ("gcc", "build-essential", "clang", "cc ", "-dev"):
        assert compiler not in final_text, compiler
    assert "COPY --from=build /opt/venv /opt/venv" in final
    users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    assert users, "the final stage sets a user"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), "a numeric uid (runAsNonRoot can check only that)"
    assert int(uid) != 0
    healthcheck = next(line for line in final if line.startswith("HEALTHCHECK "))
    assert "/healthz" in healthcheck
    assert "curl" not in healthcheck
    assert "wget" not in healthcheck
    command = 'CMD ["imagegen-gateway", "serve", "--host", "0.0.0.0", "--port", "8000"]'
    assert final[-1] == command
    assert any(line.startswith("WORKDIR /srv") for line in final)


def test_migrations_reach_the_image_inside_the_wheel() -> None:
    """`imagegen-gateway migrate` finds them in the installed package (app._migrations), so the
    build stage has them before it builds the wheel and the final stage needs no copy of its own."""
    build, final = stages(DOCKERFILE.read_text())[-2:]
    copy = build.index("COPY migrations ./migrations")
    wheel = next(i for i, line in enumerate(build) if " wheel " in line and "pip" in line)
    assert copy < wheel
    for line in final:
        assert not (line.startswith("COPY ") and "migrations" in line), line
        assert not (line.startswith("COPY ") and "alembic.ini" in line), line


def test_dockerignore_keeps_the_context_small() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "an allow-list"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {
        "app",
        "migrations",
        "pyproject.toml",
        "README.md",
        "requirements.lock",
        "requirements-build.lock",
    }
    for path in allowed:
        assert (ROOT / path).exists(), path
    assert "**/__pycache__" in lines


def test_lock_pins_every_runtime_dependency_of_pyproject() -> None:
    lock = parse_lock(ROOT / "requirements.lock")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["dependencies"]
    for line in project["dependencies"]:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in lock, f"{requirement.name} is not in requirements.lock"
        version = lock[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"requirements.lock pins {name}=={version}, pyproject wants {requirement.specifier}"
        )
    dev = {
        canonicalize_name(Requirement(line).name)
        for line in project["optional-dependencies"]["dev"]
    }
    runtime = {canonicalize_name(Requirement(line).name) for line in project["dependencies"]}
    assert not (dev - runtime) & set(lock), "dev tools do not belong in the image"


def test_lock_covers_the_installed_runtime_closure() -> None:
    """The image installs with --no-deps: everything the project needs, transitively (extras
    such as uvicorn[standard] included), must be in the lock."""
    closure = lock_script().runtime_closure()
    lock = parse_lock(ROOT / "requirements.lock")
    assert closure
    missing = sorted(set(closure) - set(lock))
    assert not missing, f"not in requirements.lock (run scripts/lock_requirements.py): {missing}"
    assert "uvloop" in lock  # uvicorn[standard]
    assert "httptools" in lock
    assert "greenlet" in lock  # sqlalchemy[asyncio]


def test_build_lock_pins_the_build_backend() -> None:
    lock = parse_lock(ROOT / "requirements-build.lock")
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    for line in requires:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in lock, name
        assert SpecifierSet(str(requirement.specifier)).contains(lock[name][0])


def test_container_build_script_is_wired() -> None:
    script = (ROOT / "scripts" / "container-build").read_text()
    result = run("bash", "-n", str(ROOT / "scripts" / "container-build"))
    assert result.returncode == 0, result.stderr
    assert "timeout --kill-after" in script
    assert "exit 4" in script  # base image missing and not pullable
    assert "--read-only" in script
    assert "--tmpfs /tmp" in script
    assert "/healthz" in script
