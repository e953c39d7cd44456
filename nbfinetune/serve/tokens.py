"""API keys for the serving endpoint: generated, shown once, kept only as a SHA-256 hash.

The hash goes into each served run's directory (serving.json) so it is on record which key served a
run and when; the key itself is never written anywhere, nor put in events or logs.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from pathlib import Path
from typing import Any

PREFIX = "nbft-"


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def record(run_dir: Path, digest: str, url: str, models: list[str]) -> None:
    """Append this serving session (key hash, URL, model names) to run_dir/serving.json."""
    path = run_dir / "serving.json"
    try:
        sessions: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))["sessions"]
    except (OSError, ValueError, KeyError, TypeError):
        sessions = []
    sessions.append({"token_sha256": digest, "url": url, "models": models, "started": time.time()})
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"sessions": sessions[-20:]}, indent=1), encoding="utf-8")
    tmp.replace(path)
