"""Write requirements.lock and requirements-build.lock for the container image.

requirements.lock pins the runtime dependency closure of the project exactly as installed in
.venv (the dependencies of `imagegen-gateway` and their extras, followed transitively; dev tools
are left out), each with the sha256 of the wheels the image installs: CPython 3.11 on glibc
2.36 (Debian bookworm, the base of python:3.11-slim) for x86_64 and aarch64.
requirements-build.lock pins the build backend named in pyproject.toml.

Run after changing dependencies:  .venv/bin/python scripts/lock_requirements.py
(it downloads the pinned wheels with pip into a temporary directory to hash them).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import tomllib
from collections import defaultdict
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "imagegen-gateway"
PYTHON_VERSION = "3.11"
ARCHITECTURES = ("x86_64", "aarch64")
GLIBC_MINOR = 36  # Debian bookworm


def platform_tags(arch: str) -> list[str]:
    """The wheel platforms a glibc 2.36 system accepts, the most specific first (as pip ranks)."""
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(GLIBC_MINOR, 16, -1)]
    return [*tags, f"manylinux2014_{arch}"]


def runtime_closure(project: str = PROJECT) -> dict[str, str]:
    """Installed name -> version for every runtime dependency of `project`, transitively."""
    extras_seen: dict[str, set[str]] = {}
    versions: dict[str, str] = {}
    stack: list[tuple[str, frozenset[str]]] = [(project, frozenset())]
    while stack:
        name, extras = stack.pop()
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            sys.exit(f"{name} is required but not installed here; run scripts/bootstrap")
        key = canonicalize_name(dist.metadata["Name"])
        known = extras_seen.get(key)
        if known is not None and extras <= known:
            continue
        extras_seen.setdefault(key, set()).update(extras)
        versions[key] = dist.version
        environments = [{"extra": extra} for extra in (extras or {""})]
        for line in dist.requires or []:
            requirement = Requirement(line)
            marker = requirement.marker
            if marker is not None and not any(marker.evaluate(env) for env in environments):
                continue
            stack.append((requirement.name, frozenset(requirement.extras)))
    versions.pop(canonicalize_name(project), None)
    return dict(sorted(versions.items()))


def wheel_hashes(pins: dict[str, str], workdir: Path) -> dict[str, set[str]]:
    """sha256 of the wheel pip picks for each pin, on each target platform."""
    workdir.mkdir(parents=True, exist_ok=True)
    requirements = workdir / "pins.txt"
    requirements.write_text("".join(f"{name}=={version}\n" for name, version in pins.items()))
    hashes: dict[str, set[str]] = defaultdict(set)
    for arch in ARCHITECTURES:
        target = workdir / arch
        platforms = [arg for tag in platform_tags(arch) for arg in ("--platform", tag)]
        subprocess.run(  # noqa: S603 - fixed arguments, our own interpreter
            [
                sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                "--only-binary=:all:", "--implementation", "cp",
                "--python-version", PYTHON_VERSION, *platforms,
                "--dest", str(target), "-r", str(requirements),
            ],
            check=True,
        )  # fmt: skip
        for wheel in target.glob("*.whl"):
            name = canonicalize_name(parse_wheel_filename(wheel.name)[0])
            hashes[name].add(hashlib.sha256(wheel.read_bytes()).hexdigest())
    missing = set(pins) - set(hashes)
    if missing:
        sys.exit(f"no wheel downloaded for {', '.join(sorted(missing))}")
    return hashes


def render(pins: dict[str, str], hashes: dict[str, set[str]], header: str) -> str:
    lines = [header]
    for name, version in pins.items():
        entry = [f"{name}=={version}"]
        entry += [f"    --hash=sha256:{digest}" for digest in sorted(hashes[name])]
        lines.append(" \\\n".join(entry))
    return "\n".join(lines) + "\n"


def build_pins() -> dict[str, str]:
    """The newest versions of the build backend allowed by pyproject.toml, resolved by pip."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    requires: list[str] = pyproject["build-system"]["requires"]
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(  # noqa: S603
            [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
             "--dest", tmp, *requires],
            check=True,
        )  # fmt: skip
        pins = {}
        for wheel in Path(tmp).glob("*.whl"):
            name, version, _, _ = parse_wheel_filename(wheel.name)
            pins[canonicalize_name(name)] = str(version)
    return dict(sorted(pins.items()))


def main() -> None:
    header = (
        "# Generated by scripts/lock_requirements.py from the environment in .venv; do not edit.\n"
        "# {what}; wheel hashes for CPython {py} on {platforms}.\n"
        "# Install with: pip install --require-hashes --only-binary=:all: --no-deps -r {file}\n"
    )
    platforms = f"glibc 2.{GLIBC_MINOR} " + " and ".join(ARCHITECTURES)
    runtime = runtime_closure()
    build = build_pins()
    with tempfile.TemporaryDirectory() as tmp:
        runtime_hashes = wheel_hashes(runtime, Path(tmp) / "runtime")
        build_hashes = wheel_hashes(build, Path(tmp) / "build")
    (ROOT / "requirements.lock").write_text(
        render(
            runtime,
            runtime_hashes,
            header.format(
                what=f"Runtime dependency closure of {PROJECT}",
                py=PYTHON_VERSION,
                platforms=platforms,
                file="requirements.lock",
            ),
        )
    )
    (ROOT / "requirements-build.lock").write_text(
        render(
            build,
            build_hashes,
            header.format(
                what="Build backend of the project (pyproject.toml [build-system])",
                py=PYTHON_VERSION,
                platforms=platforms,
                file="requirements-build.lock",
            ),
        )
    )
    print(f"requirements.lock: {len(runtime)} packages; requirements-build.lock: {len(build)}")


if __name__ == "__main__":
    main()
