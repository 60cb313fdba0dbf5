"""The project's wheel, installed into a virtualenv outside the checkout, migrates and serves from
an empty working directory: the Alembic scripts ship inside the package (app._migrations)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import uuid
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.support import databases
from tests.support.servers import ROOT, Process, free_port
from tests.support.waiting import wait_until_up

pytestmark = pytest.mark.e2e

API_KEY = "wheel-key-0123456789abcdef"
# What the Dockerfile's build stage copies before it builds the wheel.
SOURCES = ("pyproject.toml", "README.md", "app", "migrations")


def run(
    *args: str | Path, cwd: Path, env: dict[str, str] | None = None, timeout: float = 180
) -> str:
    """Run a command to completion; its output, or a failure that shows it."""
    result = subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{args} exited {result.returncode}:\n{output}"
    return output


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built by pip from a copy of the sources (the checkout gets no build/ dir)."""
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(ROOT / name, source / name, ignore=ignore)
        else:
            shutil.copy2(ROOT / name, source / name)
    dist = tmp_path_factory.mktemp("dist")
    pip = (sys.executable, "-m", "pip", "--disable-pip-version-check")
    run(*pip, "wheel", "--no-deps", "--quiet", "--wheel-dir", dist, source, cwd=source)
    (built,) = dist.glob("imagegen_gateway-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtualenv outside the checkout with the wheel installed.

    The dependencies are not downloaded again: a .pth file puts this test run's site-packages on
    the new venv's path. Directories a .pth file adds are not scanned for .pth files of their own,
    so the editable install of the checkout (a .pth hook there) stays out: `app` can only come
    from the wheel."""
    venv = tmp_path_factory.mktemp("venv")
    assert not venv.is_relative_to(ROOT)
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=venv)
    python = venv / "bin" / "python"
    site = run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=venv)
    ours = sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")})
    (Path(site.strip()) / "test-run-dependencies.pth").write_text("\n".join(ours) + "\n")
    pip = (sys.executable, "-m", "pip", "--disable-pip-version-check", "--python", python)
    run(*pip, "install", "--no-deps", "--no-index", "--quiet", wheel, cwd=venv)
    return venv


def installed_env(**values: str) -> dict[str, str]:
    """The environment of the installed copy: no PYTHONPATH that could reach the checkout."""
    return {**os.environ, "PYTHONPATH": "", **values}


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """An empty working directory outside the checkout: no migrations/, no alembic.ini."""
    directory = tmp_path / "cwd"
    directory.mkdir()
    assert not directory.is_relative_to(ROOT)
    return directory


@pytest.fixture(params=["sqlite", "postgresql"])
async def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A database with no schema at all (SQLite: not even its directory)."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'data' / 'imagegen.db'}"
        return
    server: str = request.getfixturevalue("postgres_server")
    name = f"imagegen_wheel_{uuid.uuid4().hex[:12]}"
    await databases.admin_execute(server, f'CREATE DATABASE "{name}"')
    url = databases.with_database(server, name)
    yield url
    await databases.drop_postgres_database(server, url)


def test_the_wheel_carries_the_migrations(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"app/_migrations/env.py", "app/_migrations/script.py.mako"} <= names
    revisions = sorted((ROOT / "migrations" / "versions").glob("[0-9]*.py"))
    assert revisions
    for revision in revisions:
        assert f"app/_migrations/versions/{revision.name}" in names
    assert not [name for name in names if name.startswith("migrations/")], "no top-level package"


def test_the_installed_copy_runs_the_wheel_not_the_checkout(venv: Path, workdir: Path) -> None:
    code = (
        "import json, app, app.core.migrate as m;"
        "print(json.dumps([app.__file__, str(m.migrations_dir())]))"
    )
    output = run(venv / "bin" / "python", "-c", code, cwd=workdir, env=installed_env())
    package, migrations = (Path(path) for path in json.loads(output))
    assert package.is_relative_to(venv), package
    assert migrations == package.parent / "_migrations"
    assert (migrations / "versions").is_dir()


async def test_migrate_then_serve_from_an_empty_directory(
    venv: Path, workdir: Path, empty_database_url: str, tmp_path: Path
) -> None:
    script = venv / "bin" / "imagegen-gateway"
    env = installed_env(
        IMAGEGEN_DATABASE_URL=empty_database_url,
        IMAGEGEN_STORAGE_URL=f"file://{tmp_path / 'images'}",
        IMAGEGEN_PROVIDER="simulator",
        IMAGEGEN_API_KEYS=f"wheel:{API_KEY}",
    )
    run(script, "migrate", cwd=workdir, env=env, timeout=60)

    port = free_port()
    args = ["serve", "--host", "127.0.0.1", "--port", str(port)]
    process = Process(args, env, tmp_path / "serve.log", command=[str(script)], cwd=workdir)
    try:
        base = f"http://127.0.0.1:{port}"
        await wait_until_up(f"{base}/healthz", process)
        async with httpx.AsyncClient(base_url=base) as client:
            ready = await client.get("/readyz")
        assert ready.status_code == 200, process.output()
        assert ready.json() == {"status": "ready"}
    finally:
        status = process.stop(timeout=20)  # uvicorn re-raises the SIGTERM after a clean stop
        assert status in (0, -signal.SIGTERM), process.log_path.read_text()
    assert list(workdir.iterdir()) == [], "nothing was written to the working directory"
