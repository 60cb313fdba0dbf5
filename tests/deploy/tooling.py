"""Helpers for the deployment checks: the repository's paths and the dev tools in the venv."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def tool(name: str) -> str:
    """A dev tool installed beside this interpreter (scripts/bootstrap); never skipped."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    assert found, f"{name} is not installed: run scripts/bootstrap (it is a dev dependency)"
    return found


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a tool in the repository root; the caller asserts on the result."""
    return subprocess.run(
        list(args), cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
